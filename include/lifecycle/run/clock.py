"""The run's two clocks: `as_of`, the moment a run acts for (given, always UTC-aware), and the
wall clock that stamps what it writes."""

from __future__ import annotations

from datetime import UTC, datetime


def utc(as_of: datetime) -> datetime:
    """`as_of` in UTC; a naive datetime is refused (its zone would be a guess)."""
    if as_of.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware, got naive {as_of.isoformat()}")
    return as_of.astimezone(UTC)


def now() -> datetime:
    return datetime.now(UTC)
