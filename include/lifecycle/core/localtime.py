"""Customers' local dates in SQL, exactly and identically on SQLite and PostgreSQL.

SQLite knows no timezones, so there the warehouse keeps a small table of UTC-offset periods
per IANA timezone (`tz_offsets`), computed in Python with zoneinfo and filled on demand for
the timezones customers actually use; `local_date(instant, timezone)` looks the offset up.
PostgreSQL converts natively (`AT TIME ZONE`), which is an order of magnitude faster than a
correlated lookup per row; both follow the IANA rules, so the dates agree.

The small date functions below compile to each dialect's own date arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeGuard
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, Date, Integer, String, select, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from lifecycle.store import dialect
from lifecycle.store.schema import tz_offsets

# Offsets are tabulated from COVER_FROM to COVER_UNTIL; the first period also covers every
# earlier instant and the last every later one.
COVER_FROM = datetime(1990, 1, 1, tzinfo=UTC)
COVER_UNTIL = datetime(2080, 1, 1, tzinfo=UTC)
EPOCH = datetime(1, 1, 1, tzinfo=UTC)


def is_known_timezone(name: str | None) -> TypeGuard[str]:
    if not name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def zone_or_utc(name: str | None) -> ZoneInfo:
    """The customer's zone; an unknown or missing timezone counts as UTC, as in the features."""
    return ZoneInfo(name) if is_known_timezone(name) else ZoneInfo("UTC")


def usable_timezones(conn: Connection, names: Iterable[str | None]) -> list[str]:
    """The names both zoneinfo and (on PostgreSQL) the database server know, sorted."""
    known = sorted({name for name in names if is_known_timezone(name)})
    if conn.dialect.name == "postgresql" and known:
        server = set(
            conn.scalars(
                text("SELECT name FROM pg_timezone_names WHERE name = ANY(:names)"),
                {"names": known},
            )
        )
        known = [name for name in known if name in server]
    return known


def offset_periods(name: str) -> list[tuple[datetime, int]]:
    """(start in UTC, offset in seconds) of every period with a constant UTC offset."""
    zone = ZoneInfo(name)

    def offset(instant: datetime) -> int:
        local = instant.astimezone(zone)
        return int((local.utcoffset() or timedelta(0)).total_seconds())  # aware: never None

    periods = [(EPOCH, offset(COVER_FROM))]
    day, current = COVER_FROM, periods[0][1]
    while day < COVER_UNTIL:
        following = day + timedelta(days=1)
        if offset(following) != current:
            # Bisect to the second at which the offset changes.
            low, high = day, following
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if offset(middle) == current else (low, middle)
            current = offset(high)
            periods.append((high.replace(microsecond=0), current))
        day = following
    return periods


def ensure_offsets(conn: Connection, timezones: Iterable[str]) -> None:
    """Tabulate the offsets of the given (known) timezones that are not in `tz_offsets` yet.

    Only SQLite needs them: PostgreSQL converts with its own copy of the tz database.
    """
    if conn.dialect.name != "sqlite":
        return
    wanted = set(timezones) | {"UTC"}
    present = set(
        conn.scalars(
            select(tz_offsets.c.timezone).distinct().where(tz_offsets.c.timezone.in_(wanted))
        )
    )
    rows = [
        {"timezone": name, "starts_at": starts_at, "offset_seconds": seconds}
        for name in sorted(wanted - present)
        for starts_at, seconds in offset_periods(name)
    ]
    if rows:
        conn.execute(dialect.insert(conn, tz_offsets).on_conflict_do_nothing(), rows)


def offset_at(timezone: ColumnElement[str], instant: ColumnElement[datetime]) -> ColumnElement[int]:
    """The UTC offset in seconds of `timezone` at `instant` (a correlated scalar subquery)."""
    return (
        select(tz_offsets.c.offset_seconds)
        .where(tz_offsets.c.timezone == timezone, tz_offsets.c.starts_at <= instant)
        .order_by(tz_offsets.c.starts_at.desc())
        .limit(1)
        .scalar_subquery()
    )


def local_today(as_of: datetime, timezone: str) -> date:
    return as_of.astimezone(ZoneInfo(timezone)).date()


# --- dialect-specific date functions --------------------------------------------------------
class local_date(FunctionElement[date]):
    """The calendar date of UTC `instant` in IANA `timezone` (a known name).

    PostgreSQL converts natively; SQLite shifts by the offset looked up in `tz_offsets`.
    """

    type = Date()
    inherit_cache = True


@compiles(local_date, "sqlite")
def _local_date_sqlite(element: local_date, compiler: SQLCompiler, **kw: Any) -> str:
    instant, timezone = list(element.clauses)
    offset = compiler.process(offset_at(timezone, instant), **kw)
    return f"date({compiler.process(instant, **kw)}, {offset} || ' seconds')"


@compiles(local_date, "postgresql")
def _local_date_pg(element: local_date, compiler: SQLCompiler, **kw: Any) -> str:
    instant, timezone = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(({instant}) AT TIME ZONE ({timezone}) AS DATE)"


class days_between(FunctionElement[int]):
    """Whole days from date `earlier` to date `later`."""

    type = Integer()
    inherit_cache = True


@compiles(days_between, "sqlite")
def _days_between_sqlite(element: days_between, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(julianday({later}) - julianday({earlier}) AS INTEGER)"


@compiles(days_between, "postgresql")
def _days_between_pg(element: days_between, compiler: SQLCompiler, **kw: Any) -> str:
    later, earlier = (compiler.process(c, **kw) for c in element.clauses)
    return f"(CAST({later} AS DATE) - CAST({earlier} AS DATE))"


class month_day(FunctionElement[str]):
    """'MM-DD' of a date."""

    type = String()
    inherit_cache = True


@compiles(month_day, "sqlite")
def _month_day_sqlite(element: month_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"strftime('%m-%d', {compiler.process(element.clauses, **kw)})"


@compiles(month_day, "postgresql")
def _month_day_pg(element: month_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char({compiler.process(element.clauses, **kw)}, 'MM-DD')"


class year_of(FunctionElement[int]):
    type = Integer()
    inherit_cache = True


@compiles(year_of, "sqlite")
def _year_of_sqlite(element: year_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(strftime('%Y', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


@compiles(year_of, "postgresql")
def _year_of_pg(element: year_of, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(EXTRACT(YEAR FROM {compiler.process(element.clauses, **kw)}) AS INTEGER)"


class date_from_text(FunctionElement[date]):
    """A date from 'YYYY-MM-DD' text."""

    type = Date()
    inherit_cache = True


@compiles(date_from_text, "sqlite")
def _date_from_text_sqlite(element: date_from_text, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date({compiler.process(element.clauses, **kw)})"


@compiles(date_from_text, "postgresql")
def _date_from_text_pg(element: date_from_text, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS DATE)"
