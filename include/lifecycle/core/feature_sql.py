"""Every customer feature as a SQL expression, computed in the warehouse for one as-of instant.

`FEATURES` describes each feature (kind, level); `feature_query` builds them as SQLAlchemy Core
expressions over the source tables (`lifecycle.core.sources`), so segments filter on exactly
the same definitions that `features.materialize` stores in the `customer_features` snapshot.

Dates a customer sees (today, signup day, last order day, delivery day, birthday) are local
dates in the customer's own timezone at `as_of`; an unknown timezone counts as UTC.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Date,
    Engine,
    Float,
    FromClause,
    Select,
    String,
    and_,
    case,
    cast,
    func,
    literal,
    not_,
    or_,
    select,
)

from lifecycle.core.config import Settings
from lifecycle.core.localtime import (
    date_from_text,
    days_between,
    ensure_offsets,
    local_date,
    local_today,
    month_day,
    usable_timezones,
    year_of,
)
from lifecycle.core.sources import source_customers, source_orders
from lifecycle.store.schema import customer_features, survey_responses

# Loyalty tiers by points (the shop gives 10 points per dollar), highest first.
TIERS = (("platinum", 15_000), ("gold", 5_000), ("silver", 1_000))
RECENT_DELIVERY_DAYS = 30
ONBOARDING_STEPS = {0: "day0", 3: "day3", 7: "day7"}

Kind = Literal["number", "text", "date", "datetime", "bool"]
# customer: the customer row; orders: their order history; order: one delivered order per
# row (feedback); rfm: scores from the latest materialized snapshot; survey: their latest
# survey answer (survey_responses).
Level = Literal["customer", "orders", "order", "rfm", "survey"]


@dataclass(frozen=True)
class Feature:
    kind: Kind
    level: Level
    description: str
    instant: str | None = None  # for a local date: the UTC instant feature it comes from


FEATURES: dict[str, Feature] = {
    "customer_id": Feature("number", "customer", "customer id"),
    "email": Feature("text", "customer", "email address as stored"),
    "email_valid": Feature("bool", "customer", "email present and well-formed"),
    "email_reason": Feature("text", "customer", "missing_email / malformed_email, else null"),
    "first_name": Feature("text", "customer", "first name"),
    "last_name": Feature("text", "customer", "last name"),
    "locale": Feature("text", "customer", "locale as stored"),
    "timezone": Feature("text", "customer", "effective IANA timezone (UTC when unknown)"),
    "timezone_valid": Feature("bool", "customer", "the stored timezone is a known IANA name"),
    "marketing_consent": Feature("bool", "customer", "opted in to marketing email"),
    "loyalty_points": Feature("number", "customer", "current loyalty points"),
    "loyalty_tier": Feature("text", "customer", "silver / gold / platinum by points, else null"),
    "signup_at": Feature("datetime", "customer", "signup instant (UTC)"),
    "local_date": Feature("date", "customer", "the customer's local date at as_of"),
    "signup_local_date": Feature("date", "customer", "local date of signup", "signup_at"),
    "tenure_days": Feature("number", "customer", "local days since signup"),
    "onboarding_step": Feature("text", "customer", "day0 / day3 / day7 on those local days"),
    "birth_date": Feature("date", "customer", "date of birth"),
    "next_birthday": Feature("date", "customer", "next local birthday (today if it is today)"),
    "birthday_today": Feature("bool", "customer", "local birthday today (29 Feb on 28 Feb)"),
    "birthday_year": Feature("number", "customer", "the customer's local year at as_of"),
    "first_order_at": Feature("datetime", "orders", "first order (not cancelled)"),
    "last_order_at": Feature("datetime", "orders", "last order (not cancelled)"),
    "order_count": Feature("number", "orders", "orders not cancelled"),
    "total_spend": Feature("number", "orders", "spend on orders not cancelled or returned"),
    "avg_spend": Feature("number", "orders", "average spend per kept order"),
    "last_order_local_date": Feature(
        "date", "orders", "local date of the last order", "last_order_at"
    ),
    "days_since_last_order": Feature("number", "orders", "local days since the last order"),
    "lapse_started_on": Feature(
        "date", "orders", "the lapse episode: local date of the last order"
    ),
    "delivered_orders_30d": Feature("number", "orders", "orders delivered in the last 30 days"),
    "order_id": Feature("number", "order", "the delivered order's id"),
    "order_amount": Feature("number", "order", "the delivered order's amount"),
    "order_currency": Feature("text", "order", "the delivered order's currency"),
    "order_placed_at": Feature("datetime", "order", "when the order was placed (UTC)"),
    "order_delivered_at": Feature("datetime", "order", "when it was delivered (UTC)"),
    "delivered_local_date": Feature(
        "date", "order", "local date of delivery", "order_delivered_at"
    ),
    "days_since_delivery": Feature("number", "order", "local days since delivery"),
    "rfm_recency": Feature("number", "rfm", "recency score 1-5 (5 = most recent)"),
    "rfm_frequency": Feature("number", "rfm", "frequency score 1-5"),
    "rfm_monetary": Feature("number", "rfm", "monetary score 1-5"),
    "rfm_score": Feature("text", "rfm", "'RFM' digits, e.g. '545'"),
    "rfm_segment": Feature("text", "rfm", "Champions, Loyal, At risk, Lost, ..."),
    "survey_score": Feature("number", "survey", "score 0-10 of the latest survey answer"),
    "survey_answered_at": Feature("datetime", "survey", "when it was last given (UTC)"),
    "survey_local_date": Feature(
        "date", "survey", "local date of the latest survey answer", "survey_answered_at"
    ),
    "survey_response_id": Feature("number", "survey", "the answer: one per surveyed email"),
    "survey_campaign": Feature("text", "survey", "the campaign that asked"),
    "survey_occurrence_key": Feature("text", "survey", "the email that asked, e.g. the order id"),
}


def prepare_timezones(engine: Engine, settings: Settings) -> list[str]:
    """The known IANA timezones customers use (others count as UTC), ready for local dates."""
    customers = source_customers(settings)
    with engine.begin() as conn:
        known = usable_timezones(conn, conn.scalars(select(customers.c.timezone).distinct()))
        ensure_offsets(conn, known)
    return known


@dataclass(frozen=True)
class FeatureQuery:
    """Feature expressions over one FROM clause; `select(names)` picks the ones needed."""

    as_of: datetime
    columns: dict[str, ColumnElement[Any]]
    from_clause: FromClause
    where: ColumnElement[bool]

    def select(self, names: list[str]) -> Select[Any]:
        return (
            select(*(self.columns[name].label(name) for name in names))
            .select_from(self.from_clause)
            .where(self.where)
        )


def feature_query(
    settings: Settings, as_of: datetime, known_timezones: list[str], levels: set[Level]
) -> FeatureQuery:
    """Every feature of the requested levels, for customers who had signed up by `as_of`.

    With level "order" there is one row per delivered order rather than per customer.
    """
    c = source_customers(settings)
    known = c.c.timezone.in_(known_timezones)
    tz = case((known, c.c.timezone), else_=literal("UTC"))
    todays = {local_today(as_of, name) for name in ["UTC", *known_timezones]}
    today = _local_today(c.c.timezone, as_of, known_timezones)
    columns: dict[str, ColumnElement[Any]] = {
        "customer_id": c.c.customer_id,
        "email": c.c.email,
        "first_name": c.c.first_name,
        "last_name": c.c.last_name,
        "locale": c.c.locale,
        "timezone": tz,
        "timezone_valid": and_(c.c.timezone.is_not(None), known),
        "marketing_consent": c.c.marketing_consent,
        "loyalty_points": c.c.loyalty_points,
        "loyalty_tier": case(
            *((c.c.loyalty_points >= points, literal(tier)) for tier, points in TIERS)
        ),
        "signup_at": c.c.signup_at,
        "local_date": today,
        "birth_date": c.c.birth_date,
        **_email_columns(c.c.email),
        **_signup_columns(c.c.signup_at, tz, today),
        **_birthday_columns(c.c.birth_date, today, todays),
    }
    from_clause: FromClause = c
    where = c.c.signup_at <= as_of
    if "orders" in levels:
        history = _order_history(settings, as_of)
        from_clause = from_clause.outerjoin(history, history.c.customer_id == c.c.customer_id)
        columns.update(_history_columns(history, tz, today))
    if "order" in levels:
        o = source_orders(settings, "delivered")
        from_clause = from_clause.join(o, o.c.customer_id == c.c.customer_id)
        where = and_(where, o.c.status == "delivered", o.c.delivered_at <= as_of)
        columns.update(_delivered_order_columns(o, tz, today))
    if "rfm" in levels:
        f = customer_features
        from_clause = from_clause.outerjoin(f, f.c.customer_id == c.c.customer_id)
        columns.update({name: f.c[name] for name, feat in FEATURES.items() if feat.level == "rfm"})
    if "survey" in levels:
        latest = _latest_answers(as_of)
        from_clause = from_clause.outerjoin(latest, latest.c.customer_id == c.c.customer_id)
        columns.update(_survey_columns(latest, tz))
    return FeatureQuery(as_of, columns, from_clause, where)


def _local_today(
    stored_timezone: ColumnElement[str], as_of: datetime, known_timezones: list[str]
) -> ColumnElement[date]:
    """Local date at as_of: at most three distinct dates, so a CASE over timezone lists."""
    utc_today = as_of.astimezone(UTC).date()
    by_date: dict[date, list[str]] = defaultdict(list)
    for name in known_timezones:
        by_date[local_today(as_of, name)].append(name)
    whens = [
        (stored_timezone.in_(names), literal(day, Date))
        for day, names in sorted(by_date.items())
        if day != utc_today
    ]
    utc = literal(utc_today, Date)
    return case(*whens, else_=utc) if whens else utc


def _email_columns(email: ColumnElement[str]) -> dict[str, ColumnElement[Any]]:
    # Portable LIKE patterns: something@something.something, one @, no spaces inside (padding
    # around the address is trimmed where it is sent: run.plan stores it stripped).
    address = func.trim(email)
    well_formed = and_(
        address.like("%_@_%._%"), not_(address.like("%@%@%")), not_(address.like("% %"))
    )
    reason = case(
        (or_(email.is_(None), func.trim(email) == ""), literal("missing_email")),
        (not_(well_formed), literal("malformed_email")),
    )
    return {"email_reason": reason, "email_valid": reason.is_(None)}


def _signup_columns(
    signup_at: ColumnElement[datetime], tz: ColumnElement[str], today: ColumnElement[date]
) -> dict[str, ColumnElement[Any]]:
    signup_day = local_date(signup_at, tz)
    tenure = days_between(today, signup_day)
    steps = case(ONBOARDING_STEPS, value=tenure)
    return {"signup_local_date": signup_day, "tenure_days": tenure, "onboarding_step": steps}


def _birthday_columns(
    birth_date: ColumnElement[date], today: ColumnElement[date], todays: set[date]
) -> dict[str, ColumnElement[Any]]:
    year = year_of(today)
    # 'MM-DD' order picks the year, 29 February included (28 Feb <= it < 1 March).
    later_this_year = month_day(birth_date) >= month_day(today)
    upcoming = _birthday_in(birth_date, year + case((later_this_year, 0), else_=1))
    # Per possible local today, the birth month-days celebrated on it: a cheap test per row.
    celebrated = or_(
        *(and_(today == day, month_day(birth_date).in_(_celebrated_on(day))) for day in todays)
    )
    return {
        "next_birthday": upcoming,
        "birthday_today": and_(birth_date.is_not(None), celebrated),
        "birthday_year": year,
    }


def _celebrated_on(day: date) -> list[str]:
    """Birth month-days celebrated on `day`: 29 February moves to 28 February in common years."""
    month_days = [f"{day:%m-%d}"]
    if (day.month, day.day) == (2, 28) and not calendar.isleap(day.year):
        month_days.append("02-29")
    return month_days


def _birthday_in(birth_date: ColumnElement[date], year: ColumnElement[int]) -> ColumnElement[date]:
    """The birthday in `year`; 29 February falls on 28 February in common years."""
    leap = or_(and_(year % 4 == 0, year % 100 != 0), year % 400 == 0)
    born = month_day(birth_date)
    day = case((and_(born == "02-29", not_(leap)), literal("02-28")), else_=born)
    return date_from_text(cast(year, String) + literal("-") + day)


def _order_history(settings: Settings, as_of: datetime) -> FromClause:
    o = source_orders(settings)
    kept = o.c.status != "returned"
    recent_delivery = and_(
        o.c.status == "delivered",
        o.c.delivered_at > as_of - timedelta(days=RECENT_DELIVERY_DAYS),
        o.c.delivered_at <= as_of,
    )
    return (
        select(
            o.c.customer_id,
            func.min(o.c.placed_at).label("first_order_at"),
            func.max(o.c.placed_at).label("last_order_at"),
            func.count().label("order_count"),
            func.sum(case((kept, 1), else_=0)).label("kept_count"),
            func.coalesce(func.sum(case((kept, o.c.amount), else_=0)), 0).label("spend"),
            func.sum(case((recent_delivery, 1), else_=0)).label("recent_deliveries"),
        )
        .where(o.c.status != "cancelled", o.c.placed_at <= as_of)
        .group_by(o.c.customer_id)
        .subquery("history")
    )


def _history_columns(
    history: FromClause, tz: ColumnElement[str], today: ColumnElement[date]
) -> dict[str, ColumnElement[Any]]:
    h = history.c
    last_day = local_date(h.last_order_at, tz)
    return {
        "first_order_at": h.first_order_at,
        "last_order_at": h.last_order_at,
        "order_count": func.coalesce(h.order_count, 0),
        "total_spend": cast(func.round(func.coalesce(h.spend, 0), 2), Float),
        "avg_spend": cast(func.round(h.spend / func.nullif(h.kept_count, 0), 2), Float),
        "last_order_local_date": last_day,
        "days_since_last_order": days_between(today, last_day),
        "lapse_started_on": last_day,
        "delivered_orders_30d": func.coalesce(h.recent_deliveries, 0),
    }


def _delivered_order_columns(
    o: FromClause, tz: ColumnElement[str], today: ColumnElement[date]
) -> dict[str, ColumnElement[Any]]:
    delivered_day = local_date(o.c.delivered_at, tz)
    return {
        "order_id": o.c.order_id,
        "order_amount": cast(o.c.amount, Float),
        "order_currency": o.c.currency,
        "order_placed_at": o.c.placed_at,
        "order_delivered_at": o.c.delivered_at,
        "delivered_local_date": delivered_day,
        "days_since_delivery": days_between(today, delivered_day),
    }


def _latest_answers(as_of: datetime) -> FromClause:
    """Each customer's latest survey answer given by as_of (a re-score is the latest)."""
    r = survey_responses.c
    rank = (
        func.row_number()
        .over(partition_by=r.customer_id, order_by=(r.updated_at.desc(), r.id.desc()))
        .label("rank")
    )
    ranked = (
        select(r.id, r.customer_id, r.campaign_id, r.occurrence_key, r.score, r.updated_at, rank)
        .where(r.updated_at <= as_of)
        .subquery("ranked_answers")
    )
    return select(ranked).where(ranked.c.rank == 1).subquery("latest_answer")


def _survey_columns(latest: FromClause, tz: ColumnElement[str]) -> dict[str, ColumnElement[Any]]:
    a = latest.c
    return {
        "survey_score": a.score,
        "survey_answered_at": a.updated_at,
        "survey_local_date": local_date(a.updated_at, tz),
        "survey_response_id": a.id,
        "survey_campaign": a.campaign_id,
        "survey_occurrence_key": a.occurrence_key,
    }
