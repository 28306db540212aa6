"""What comes back: SendGrid's event webhook, suppressions and their sync, unsubscribe tokens
and the compliance headers every email carries."""
