"""Email addresses as inboxes: one inbox however the address is cased or padded.

Every comparison of addresses (suppressions, unsubscribes, one email per inbox, privacy
requests) goes through `inbox`, so " Ann@Shop.am" and "ann@shop.am" are the same person's inbox.
`hashed` is the form an erased address keeps on the suppression list: it matches the address
again without holding it.
"""

from __future__ import annotations

import hashlib

HASH_PREFIX = "sha256:"


def inbox(email: str) -> str:
    return email.strip().lower()


def hashed(email: str) -> str:
    return HASH_PREFIX + hashlib.sha256(inbox(email).encode("utf-8")).hexdigest()
