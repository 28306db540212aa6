"""Declarative segments: YAML rules over customer features, compiled to SQLAlchemy Core.

A segment file (`include/segments/<name>.yaml`) holds:

    description: Customers with orders but none for a while.
    grain: customer            # or "order": one row per delivered order (feedback)
    params: {days: 90}         # defaults; a campaign may override: {use: lapsed, params: {...}}
    occurrence_key: lapse_started_on   # the feature that identifies "the same email"
    rule:                      # all / any / not over conditions
      all:
        - {feature: order_count, op: ge, value: 1}
        - {feature: last_order_local_date, op: days_ago, value: {min: $days}}

Operators: eq ne lt le gt ge, in not_in (a list), between ([low, high]), is_null not_null,
and days_ago for local dates (an int, a list of ints, or {min, max}): how many local days
before the customer's own today at as_of. `$name` takes a parameter. Any unknown feature,
operator or parameter raises `SegmentError` naming the file and the rule, at load time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sqlalchemy import ColumnElement, Engine, Select, and_, func, not_, or_, select, true

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import PROJECT_ROOT, Settings
from lifecycle.core.feature_sql import (
    FEATURES,
    FeatureQuery,
    Level,
    feature_query,
    prepare_timezones,
)
from lifecycle.core.localtime import days_between

SEGMENTS_DIR = PROJECT_ROOT / "include" / "segments"
COMPARISONS = {
    "eq": lambda col, v: col == v,
    "ne": lambda col, v: col != v,
    "lt": lambda col, v: col < v,
    "le": lambda col, v: col <= v,
    "gt": lambda col, v: col > v,
    "ge": lambda col, v: col >= v,
}
OPERATORS = (*COMPARISONS, "in", "not_in", "between", "is_null", "not_null", "days_ago")
# What every audience row carries, before the campaign's template fields.
AUDIENCE_FEATURES = [
    "customer_id",
    "email",
    "email_valid",
    "email_reason",
    "first_name",
    "last_name",
    "locale",
    "timezone",
    "timezone_valid",
    "marketing_consent",
]
# A UTC instant lies within two days of its local date, whatever the timezone (UTC-12..+14).
LOCAL_DATE_SLACK = timedelta(days=2)


class SegmentError(ValueError):
    """A segment that cannot be used; the message names the file and the rule."""


@dataclass(frozen=True)
class Segment:
    name: str
    description: str
    grain: str  # "customer" or "order"
    occurrence_key: str
    rule: dict[str, Any]  # validated, parameters substituted
    source: str  # the file (or campaign) it came from, for messages
    params: dict[str, Any] = field(default_factory=dict)

    def features(self) -> set[str]:
        return _rule_features(self.rule) | {self.occurrence_key}


# --- loading ------------------------------------------------------------------------------
def builtin_names() -> list[str]:
    return sorted(path.stem for path in SEGMENTS_DIR.glob("*.yaml"))


def load_segment(ref: str | dict[str, Any], settings: Settings | None = None) -> Segment:
    """A segment by name, `{use: name, params: {...}}`, or an inline definition."""
    if isinstance(ref, str):
        return _load_file(ref, {})
    if not isinstance(ref, dict):
        raise SegmentError(f"segment reference must be a name or a mapping, got {ref!r}")
    if "use" in ref:
        unexpected = set(ref) - {"use", "params"}
        if unexpected:
            raise SegmentError(f"segment {ref['use']!r}: unexpected keys {sorted(unexpected)}")
        params = ref.get("params") or {}
        if not isinstance(params, dict):
            raise SegmentError(f"segment {ref['use']!r}: params must be a mapping")
        return _load_file(str(ref["use"]), params)
    return _parse(ref, name="inline", source="inline segment", overrides={})


def _load_file(name: str, overrides: dict[str, Any]) -> Segment:
    path = SEGMENTS_DIR / f"{name}.yaml"
    if not name.replace("_", "").isalnum() or not path.is_file():
        known = ", ".join(builtin_names())
        raise SegmentError(f"unknown segment {name!r} (known: {known})")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SegmentError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SegmentError(f"{path}: expected a mapping, got {type(raw).__name__}")
    return _parse(raw, name=name, source=str(path), overrides=overrides)


def _parse(raw: dict[str, Any], *, name: str, source: str, overrides: dict[str, Any]) -> Segment:
    allowed = {"description", "grain", "params", "occurrence_key", "rule"}
    if unexpected := set(raw) - allowed:
        raise SegmentError(f"{source}: unexpected keys {sorted(unexpected)}")
    defaults = raw.get("params") or {}
    if unknown := set(overrides) - set(defaults):
        raise SegmentError(
            f"{source}: unknown params {sorted(unknown)} (segment takes {sorted(defaults)})"
        )
    params = {**defaults, **overrides}
    grain = raw.get("grain", "customer")
    if grain not in ("customer", "order"):
        raise SegmentError(f"{source}: grain must be 'customer' or 'order', got {grain!r}")
    if "rule" not in raw:
        raise SegmentError(f"{source}: a segment needs a 'rule'")
    rule = _validate(raw["rule"], params, grain, source, "rule")
    key = _check_feature(raw.get("occurrence_key"), grain, source, "occurrence_key")
    return Segment(
        name=name,
        description=str(raw.get("description", "")),
        grain=grain,
        occurrence_key=key,
        rule=rule,
        source=source,
        params=params,
    )


def _check_feature(name: object, grain: str, source: str, where: str) -> str:
    """The feature's name, if it names a feature the grain can use."""
    if not isinstance(name, str) or name not in FEATURES:
        raise SegmentError(f"{source}: {where}: unknown feature {name!r}")
    if FEATURES[name].level == "order" and grain != "order":
        raise SegmentError(f"{source}: {where}: feature {name!r} needs grain: order")
    return name


def _validate(
    rule: Any, params: dict[str, Any], grain: str, source: str, where: str
) -> dict[str, Any]:
    """The rule with parameters substituted; raises SegmentError on anything unknown."""
    if not isinstance(rule, dict) or len(rule) == 0:
        raise SegmentError(f"{source}: {where}: expected a mapping, got {rule!r}")
    if set(rule) == {"all"} or set(rule) == {"any"}:
        ((joiner, parts),) = rule.items()
        if not isinstance(parts, list) or not parts:
            raise SegmentError(f"{source}: {where}.{joiner}: expected a non-empty list")
        checked = [
            _validate(part, params, grain, source, f"{where}.{joiner}[{i}]")
            for i, part in enumerate(parts)
        ]
        return {joiner: checked}
    if set(rule) == {"not"}:
        return {"not": _validate(rule["not"], params, grain, source, f"{where}.not")}
    if unexpected := set(rule) - {"feature", "op", "value"}:
        raise SegmentError(
            f"{source}: {where}: unexpected keys {sorted(unexpected)} "
            "(a rule is all/any/not or {feature, op, value})"
        )
    name = _check_feature(rule.get("feature"), grain, source, where)
    op = rule.get("op")
    if op not in OPERATORS:
        raise SegmentError(
            f"{source}: {where}: unknown operator {op!r} (known: {', '.join(OPERATORS)})"
        )
    value = _substitute(rule.get("value"), params, source, where)
    kind = FEATURES[name].kind
    try:
        value = _check_value(op, kind, value)
    except (TypeError, ValueError) as exc:
        raise SegmentError(f"{source}: {where}: {name} {op}: {exc}") from None
    return {"feature": name, "op": op, "value": value}


def _substitute(value: Any, params: dict[str, Any], source: str, where: str) -> Any:
    if isinstance(value, str) and value.startswith("$"):
        if value[1:] not in params:
            raise SegmentError(f"{source}: {where}: unknown parameter {value!r}")
        return params[value[1:]]
    if isinstance(value, list):
        return [_substitute(v, params, source, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, params, source, where) for k, v in value.items()}
    return value


def _check_value(op: str, kind: str, value: Any) -> Any:
    if op in ("is_null", "not_null"):
        if value not in (None, True):
            raise ValueError("takes no value")
        return None
    if op == "days_ago":
        if kind != "date":
            raise ValueError("days_ago applies to local date features only")
        if isinstance(value, dict):
            if not value or set(value) - {"min", "max"}:
                raise ValueError("expected {min: n, max: n}")
            return {k: _whole(v) for k, v in value.items()}
        if isinstance(value, list):
            return [_whole(v) for v in value]
        return _whole(value)
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise ValueError("expected a non-empty list")
        return [_scalar(kind, v) for v in value]
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError("expected [low, high]")
        return [_scalar(kind, v) for v in value]
    return _scalar(kind, value)


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number of days, got {value!r}")
    return value


def _scalar(kind: str, value: Any) -> Any:
    if value is None:
        raise ValueError("null value: use is_null / not_null")
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"expected a number, got {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    if kind == "text" and not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    if kind == "date":
        return value if isinstance(value, date) else date.fromisoformat(str(value))
    if kind == "datetime":
        parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
    return value


def _rule_features(rule: dict[str, Any]) -> set[str]:
    for joiner in ("all", "any"):
        if joiner in rule:
            return set().union(*(_rule_features(part) for part in rule[joiner]))
    if "not" in rule:
        return _rule_features(rule["not"])
    return {rule["feature"]}


# --- compiling ----------------------------------------------------------------------------
def compile_rule(rule: dict[str, Any], query: FeatureQuery) -> ColumnElement[bool]:
    """The rule as a SQLAlchemy boolean expression with bound parameters."""
    if "all" in rule:
        return and_(*(compile_rule(part, query) for part in rule["all"]))
    if "any" in rule:
        return or_(*(compile_rule(part, query) for part in rule["any"]))
    if "not" in rule:
        return not_(compile_rule(rule["not"], query))
    column, op, value = query.columns[rule["feature"]], rule["op"], rule["value"]
    if op in COMPARISONS:
        return COMPARISONS[op](column, value)
    if op == "in":
        return column.in_(value)
    if op == "not_in":
        return column.not_in(value)
    if op == "between":
        return column.between(*value)
    if op == "is_null":
        return column.is_(None)
    if op == "not_null":
        return column.is_not(None)
    return _days_ago(rule["feature"], value, query)


def _days_ago(feature: str, value: Any, query: FeatureQuery) -> ColumnElement[bool]:
    ago = days_between(query.columns["local_date"], query.columns[feature])
    if isinstance(value, dict):
        low, high = value.get("min"), value.get("max")
        condition = and_(
            ago >= low if low is not None else true(), ago <= high if high is not None else true()
        )
    elif isinstance(value, list):
        low, high = min(value), max(value)
        condition = ago.in_(value)
    else:
        low = high = value
        condition = ago == value
    instant = FEATURES[feature].instant
    if instant is None:
        return condition
    # A coarse window on the UTC instant lets the database use indexes and skip most rows.
    column, as_of = query.columns[instant], query.as_of
    if low is not None:
        condition = and_(condition, column <= as_of - timedelta(days=low) + LOCAL_DATE_SLACK)
    if high is not None:
        condition = and_(condition, column >= as_of - timedelta(days=high) - LOCAL_DATE_SLACK)
    return condition


def _levels(names: set[str]) -> set[Level]:
    levels: set[Level] = {"customer"}
    return levels | {FEATURES[name].level for name in names}


# --- audience -----------------------------------------------------------------------------
def audience(
    engine: Engine,
    spec: CampaignSpec,
    as_of: datetime,
    settings: Settings,
    chunk_size: int = 50_000,
    customer_ids: IdRange | None = None,
) -> Iterator[pd.DataFrame]:
    """The campaign's segment members at `as_of`, in chunks ordered by customer (and order);
    with `customer_ids`, only the members in that range (a condition of the query itself).

    Columns: customer_id, occurrence_key (str), the AUDIENCE_FEATURES and one per template
    field. Reads only; sends nothing.
    """
    segment = segment_for(spec, settings)
    fields = [name for name in spec.template_fields if name not in AUDIENCE_FEATURES]
    yield from _members(
        engine, segment, as_of, settings, spec.occurrence_key, fields, chunk_size, customer_ids
    )


def id_ranges(
    engine: Engine, spec: CampaignSpec, as_of: datetime, settings: Settings, size: int
) -> list[IdRange]:
    """The campaign's audience cut into customer-id ranges of about `size` members each,
    counted in the warehouse. Together the ranges cover every id (the first has no lower bound,
    the last no upper one, each starts right after the one before), so a customer who joins
    the audience between this count and the planning of the ranges is in exactly one of them.
    """
    segment = segment_for(spec, settings)
    as_of = as_of.astimezone(UTC)
    known = prepare_timezones(engine, settings)
    query = feature_query(settings, as_of, known, _levels(segment.features()))
    key = query.columns[spec.occurrence_key]
    members = (
        select(query.columns["customer_id"].label("customer_id"))
        .select_from(query.from_clause)
        .where(query.where, compile_rule(segment.rule, query), key.is_not(None))
        .distinct()
    )
    return ranges_of(engine, members, size)


def ranges_of(engine: Engine, ids: Select[Any], size: int) -> list[IdRange]:
    """`ids` (a query of one `customer_id` column) cut into ranges of `size` ids, counted in
    the warehouse; the ranges cover every id, the first and last unbounded."""
    members = ids.subquery()
    numbered = select(
        members.c.customer_id,
        ((func.row_number().over(order_by=members.c.customer_id) - 1) // size).label("part"),
    ).subquery()
    starts = (
        select(func.min(numbered.c.customer_id))
        .group_by(numbered.c.part)
        .order_by(func.min(numbered.c.customer_id))
    )
    with engine.connect() as conn:
        firsts = [int(first) for first in conn.execute(starts).scalars()]
    bounds: list[int | None] = [None, *firsts[1:], None]
    return [IdRange(low, None if high is None else high - 1) for low, high in pairwise(bounds)]


@dataclass(frozen=True)
class IdRange:
    """Customer ids `first`..`last`, both included; None: unbounded on that side."""

    first: int | None = None
    last: int | None = None

    def condition(self, column: ColumnElement[Any]) -> ColumnElement[bool]:
        return and_(
            column >= self.first if self.first is not None else true(),
            column <= self.last if self.last is not None else true(),
        )

    def __contains__(self, customer_id: int) -> bool:
        return (self.first is None or customer_id >= self.first) and (
            self.last is None or customer_id <= self.last
        )


def segment_for(spec: CampaignSpec, settings: Settings | None = None) -> Segment:
    """The campaign's segment, checking that its occurrence key and template fields exist.

    Raises SegmentError naming the spec file (for preflight, before any run).
    """
    segment = load_segment(spec.segment, settings)
    where = str(spec.source_path or f"campaign {spec.id!r}")
    _check_feature(spec.occurrence_key, segment.grain, where, "occurrence_key")
    for name in spec.template_fields:
        _check_feature(name, segment.grain, where, "template_fields")
    return segment


def _members(
    engine: Engine,
    segment: Segment,
    as_of: datetime,
    settings: Settings,
    key: str,
    fields: list[str],
    chunk_size: int,
    customer_ids: IdRange | None = None,
) -> Iterator[pd.DataFrame]:
    as_of = as_of.astimezone(UTC)
    known = prepare_timezones(engine, settings)
    query = feature_query(settings, as_of, known, _levels(segment.features() | {key, *fields}))
    names = [*AUDIENCE_FEATURES, *fields]
    order_by = [query.columns["customer_id"]]
    if segment.grain == "order":
        order_by.append(query.columns["order_id"])
    statement = (
        query.select(names)
        .add_columns(query.columns[key].label("occurrence_key"))
        .where(compile_rule(segment.rule, query), query.columns[key].is_not(None))
        .order_by(*order_by)
    )
    if customer_ids is not None:
        statement = statement.where(customer_ids.condition(query.columns["customer_id"]))
    columns = [*names, "occurrence_key"]
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(
            statement
        )
        for rows in result.partitions():
            frame = pd.DataFrame(rows, columns=columns)
            frame["occurrence_key"] = frame["occurrence_key"].map(str)
            yield frame[["customer_id", "occurrence_key", *names[1:]]]


def count(engine: Engine, segment: Segment, as_of: datetime, settings: Settings) -> int:
    """How many members the segment has at `as_of` (rows: orders for grain "order")."""
    as_of = as_of.astimezone(UTC)
    known = prepare_timezones(engine, settings)
    query = feature_query(settings, as_of, known, _levels(segment.features()))
    key = query.columns[segment.occurrence_key]
    statement = (
        select(func.count())
        .select_from(query.from_clause)
        .where(query.where, compile_rule(segment.rule, query), key.is_not(None))
    )
    with engine.connect() as conn:
        return conn.execute(statement).scalar_one()


def counts(
    engine: Engine, as_of: datetime, settings: Settings, names: list[str] | None = None
) -> dict[str, int]:
    """Members per built-in segment at `as_of` (what `lifecycle segments` and the DAG log)."""
    return {
        name: count(engine, load_segment(name, settings), as_of, settings)
        for name in names or builtin_names()
    }


def sample(
    engine: Engine, segment: Segment, as_of: datetime, settings: Settings, size: int = 5
) -> pd.DataFrame:
    """The first `size` members, with the segment's own features, for a preview."""
    shown = sorted(segment.features() - set(AUDIENCE_FEATURES), key=list(FEATURES).index)
    chunks = _members(engine, segment, as_of, settings, segment.occurrence_key, shown, size)
    return next(chunks, pd.DataFrame())


# --- holdout ------------------------------------------------------------------------------
def holdout_mask(customer_ids: pd.Series, campaign_id: str, percent: float) -> pd.Series:
    """True for customers held out of `campaign_id`: `percent`% of them, the same every run.

    A splitmix64 hash of the customer id keyed by the campaign: stable across processes,
    versions and chunkings, vectorised, and independent between campaigns.
    """
    bucket = customer_hash(customer_ids, campaign_id) % np.uint64(10_000)
    return pd.Series(bucket < np.uint64(round(percent * 100)), index=customer_ids.index)


def customer_hash(customer_ids: pd.Series, key: str) -> np.ndarray:
    """splitmix64 of each customer id xor a 64-bit digest of `key`, as uint64."""
    salt = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    with np.errstate(over="ignore"):
        x = customer_ids.to_numpy(dtype=np.uint64) ^ np.uint64(salt)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
