"""Compliance headers on every marketing email: List-Unsubscribe (RFC 2369) with one-click
unsubscribe (RFC 8058), which Gmail and Yahoo require of bulk senders.

The https URL carries the signed token (`lifecycle.feedback.unsubscribe`); a POST to it with body
`List-Unsubscribe=One-Click` unsubscribes without any page. The mailto fallback puts the same
token in the subject so that a mailbox processor can act on it.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from lifecycle.core.config import Settings

ONE_CLICK = "List-Unsubscribe=One-Click"
_UNSAFE = re.compile(r"[\s<>,\"]")  # would break out of the <...> list or inject a header


def list_unsubscribe_headers(
    settings: Settings, unsubscribe_url: str, token: str
) -> dict[str, str]:
    """`List-Unsubscribe` (https URL, then mailto) and `List-Unsubscribe-Post`."""
    if not unsubscribe_url.lower().startswith(("https://", "http://")):
        raise ValueError("the unsubscribe URL must be an http(s) URL")
    if _UNSAFE.search(unsubscribe_url) or _UNSAFE.search(token):
        raise ValueError("the unsubscribe URL or token contains characters a header cannot hold")
    mailbox = settings.unsubscribe_mailbox
    if _UNSAFE.search(mailbox) or "@" not in mailbox:
        raise ValueError(f"LIFECYCLE_UNSUBSCRIBE_MAILBOX {mailbox!r} is not an email address")
    mailto = f"mailto:{mailbox}?subject={quote('unsubscribe ' + token)}"
    return {
        "List-Unsubscribe": f"<{unsubscribe_url}>, <{mailto}>",
        "List-Unsubscribe-Post": ONE_CLICK,
    }
