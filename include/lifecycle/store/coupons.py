"""Coupons: one unique, unguessable code per (campaign, customer, occurrence key), ever.

`ensure_coupons` inserts a fresh code for every key that has none yet (insert-if-absent, so
concurrent retries on SQLite and PostgreSQL never issue a second code) and reads them all back.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, and_, select

from lifecycle.store import dialect
from lifecycle.store.schema import coupons

# No 0/O, 1/I/L: codes get typed in at checkout. 31^10 ≈ 8e14 codes: unguessable in practice.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 10
MAX_ATTEMPTS = 5  # a new code per round for keys whose code collided with an existing one
CHUNK = 500  # customer ids per IN (...) when reading back


@dataclass(frozen=True)
class CouponInfo:
    code: str
    discount_percent: float
    issued_at: datetime
    expires_at: datetime


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def ensure_coupons(
    conn: Connection,
    campaign_id: str,
    keys: list[tuple[int, str]],
    discount_percent: float,
    valid_days: int,
    as_of: datetime,
) -> dict[tuple[int, str], CouponInfo]:
    """The coupon of every (customer_id, occurrence_key) in `keys`, issuing missing ones.

    An existing coupon is returned unchanged (its code, discount and expiry stay as issued).
    New coupons expire `valid_days` after `as_of`. Runs inside the caller's transaction; the
    write comes first, so SQLite takes its write lock before reading.
    """
    if valid_days < 1 or not 0 < discount_percent <= 100:
        raise ValueError(f"bad coupon terms: {discount_percent}% for {valid_days} days")
    wanted = sorted({(int(customer_id), str(key)) for customer_id, key in keys})
    found: dict[tuple[int, str], CouponInfo] = {}
    missing = wanted
    for _ in range(MAX_ATTEMPTS):
        if not missing:
            return found
        _insert_absent(conn, campaign_id, missing, discount_percent, valid_days, as_of)
        found.update(_read(conn, campaign_id, missing))
        missing = [key for key in missing if key not in found]
    if missing:
        raise RuntimeError(f"could not issue {len(missing)} coupon codes for {campaign_id!r}")
    return found


def _insert_absent(
    conn: Connection,
    campaign_id: str,
    keys: list[tuple[int, str]],
    discount_percent: float,
    valid_days: int,
    as_of: datetime,
) -> None:
    rows = [
        {
            "code": new_code(),
            "campaign_id": campaign_id,
            "customer_id": customer_id,
            "occurrence_key": key,
            "discount_percent": discount_percent,
            "issued_at": as_of,
            "expires_at": as_of + timedelta(days=valid_days),
        }
        for customer_id, key in keys
    ]
    # Without a conflict target: a row already issued and a (rare) colliding code are both
    # skipped; the read-back tells which, and a collided key gets a new code next round.
    conn.execute(dialect.insert(conn, coupons).on_conflict_do_nothing(), rows)


def _read(
    conn: Connection, campaign_id: str, keys: list[tuple[int, str]]
) -> Iterator[tuple[tuple[int, str], CouponInfo]]:
    wanted = set(keys)
    customer_ids = sorted({customer_id for customer_id, _ in keys})
    for start in range(0, len(customer_ids), CHUNK):
        query = select(
            coupons.c.customer_id,
            coupons.c.occurrence_key,
            coupons.c.code,
            coupons.c.discount_percent,
            coupons.c.issued_at,
            coupons.c.expires_at,
        ).where(
            and_(
                coupons.c.campaign_id == campaign_id,
                coupons.c.customer_id.in_(customer_ids[start : start + CHUNK]),
            )
        )
        for row in conn.execute(query):
            key = (int(row.customer_id), row.occurrence_key)
            if key in wanted:
                info = CouponInfo(row.code, row.discount_percent, row.issued_at, row.expires_at)
                yield key, info
