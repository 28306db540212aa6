"""Hand-built rows in the demo source tables (`customers`, `orders`) for warehouse tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert

from lifecycle.store import schema


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def add_customer(engine: Engine, customer_id: int, **values: Any) -> None:
    row = {
        "id": customer_id,
        "email": f"c{customer_id}@example.com",
        "first_name": f"First{customer_id}",
        "last_name": "Last",
        "locale": "en",
        "timezone": "UTC",
        "birth_date": None,
        "signup_at": utc(2020, 1, 1),
        "marketing_consent": True,
        "loyalty_points": 0,
        **values,
    }
    with engine.begin() as conn:
        conn.execute(insert(schema.customers), [row])


def add_order(engine: Engine, order_id: int, customer_id: int, **values: Any) -> None:
    row = {
        "id": order_id,
        "customer_id": customer_id,
        "placed_at": utc(2024, 1, 1),
        "delivered_at": None,
        "amount": 50,
        "currency": "USD",
        "status": "placed",
        **values,
    }
    with engine.begin() as conn:
        conn.execute(insert(schema.orders), [row])
