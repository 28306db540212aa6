"""`fmt` in templates: dates, money, percents and numbers for the customer's locale (Babel).

Formatted values are cached: the same amounts and dates repeat across a send.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

from babel.dates import format_date
from babel.numbers import format_currency, format_decimal, format_percent

from lifecycle.core.localtime import zone_or_utc


@lru_cache(maxsize=65_536)
def _date(value: date, locale: str, style: str) -> str:
    return format_date(value, style, locale=locale)


@lru_cache(maxsize=65_536)
def _money(amount: Decimal, currency: str, locale: str) -> str:
    return format_currency(amount, currency, locale=locale)


@lru_cache(maxsize=4_096)
def _percent(value: float, locale: str) -> str:
    return format_percent(value / 100, locale=locale, format="#,##0.##%")


@lru_cache(maxsize=65_536)
def _number(value: Decimal, locale: str) -> str:
    return format_decimal(value, locale=locale)


class Formatter:
    """`fmt` in templates: dates in the customer's timezone, money, percents and numbers."""

    __slots__ = ("locale", "zone")

    def __init__(self, locale: str, timezone: str | None):
        self.locale, self.zone = locale, _zone(timezone)

    def date(self, value: date | datetime | str, style: str = "long") -> str:
        if isinstance(value, str):  # template fields arrive JSON-safe: ISO text
            value = datetime.fromisoformat(value) if len(value) > 10 else date.fromisoformat(value)
        if isinstance(value, datetime):
            aware = value if value.tzinfo else value.replace(tzinfo=UTC)
            value = aware.astimezone(self.zone).date()
        return _date(value, self.locale, style)

    def money(self, amount: float | str | Decimal, currency: str) -> str:
        return _money(Decimal(str(amount)), currency, self.locale)

    def percent(self, value: float) -> str:
        return _percent(float(value), self.locale)

    def number(self, value: float | int | str) -> str:
        return _number(Decimal(str(value)), self.locale)


@cache
def _zone(name: str | None) -> ZoneInfo:
    return zone_or_utc(name)
