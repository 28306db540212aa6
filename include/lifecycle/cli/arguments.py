"""Argument types of the commands: instants and counts are checked when they are parsed, so a
bad value is a usage error (exit 2) before anything runs."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

# Instants a campaign can mean; outside them a day's arithmetic may overflow `datetime`.
FIRST_YEAR, LAST_YEAR = 1970, 2200


def parse_datetime(value: str) -> datetime:
    """ISO 8601 date or date-time between 1970 and 2200; a naive value is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value)
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO date-time (e.g. 2026-11-24T09:30:00Z)"
        ) from None
    except OverflowError:  # year 1 or 9999 with an offset
        parsed = datetime.min.replace(tzinfo=UTC)
    if not FIRST_YEAR <= parsed.year <= LAST_YEAR:
        raise argparse.ArgumentTypeError(
            f"{value!r} is outside the years {FIRST_YEAR}..{LAST_YEAR} (UTC)"
        )
    return parsed


def _whole_number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None


def positive_int(value: str) -> int:
    """A count that must be at least 1."""
    number = _whole_number(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def window_days(value: str) -> int:
    """A window in days, 1 to 3650 (ten years; dates past that overflow the calendar)."""
    number = positive_int(value)
    if number > 3650:
        raise argparse.ArgumentTypeError(f"must be at most 3650 days, not {number}")
    return number


def window_months(value: str) -> int:
    """A number of months, 1 to 1200 (a century)."""
    number = positive_int(value)
    if number > 1200:
        raise argparse.ArgumentTypeError(f"must be at most 1200 months, not {number}")
    return number


def non_negative_int(value: str) -> int:
    """A count where 0 means none."""
    number = _whole_number(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {number}")
    return number


def port(value: str) -> int:
    number = _whole_number(value)
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 1..65535, not {number}")
    return number


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {value!r}") from None


def probability(value: str) -> float:
    number = _number(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability is 0..1, not {value}")
    return number


def milliseconds(value: str) -> float:
    number = _number(value)
    if not 0.0 <= number <= 3_600_000:  # NaN fails too
        raise argparse.ArgumentTypeError(f"milliseconds are 0..3600000, not {value}")
    return number
