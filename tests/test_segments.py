"""Built-in segments on hand-built customers, on SQLite and PostgreSQL (the engine fixture)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from source_rows import add_customer, add_order, utc
from sqlalchemy import Engine, func, select

from lifecycle import cli
from lifecycle.core import segments
from lifecycle.core.campaigns import CampaignSpec, load_campaigns
from lifecycle.core.config import Settings, load_settings
from lifecycle.store import schema


@pytest.fixture
def settings(warehouse_url: str) -> Settings:
    return load_settings(warehouse_url=warehouse_url)


def spec_for(segment: str | dict[str, Any], key: str, fields: list[str] | None = None):
    return CampaignSpec(
        id="test_campaign",
        description="test",
        segment=segment,
        template="birthday",
        occurrence_key=key,
        template_fields=fields or [],
        sender={"email": "shop@example.com"},
    )


def members(
    engine: Engine, settings: Settings, segment: str | dict[str, Any], key: str, as_of: datetime
) -> dict[int, str]:
    frames = list(segments.audience(engine, spec_for(segment, key), as_of, settings))
    if not frames:
        return {}
    frame = pd.concat(frames)
    return dict(zip(frame["customer_id"], frame["occurrence_key"], strict=True))


# --- birthday -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        # 23:30 UTC on 10 March: Kiritimati is on 11 March, Pago Pago and UTC on 10 March.
        (utc(2026, 3, 10, 23, 30), {1, 3, 5}),
        # 00:30 UTC on 11 March: Kiritimati still 11 March, Pago Pago still 10 March, UTC 11.
        (utc(2026, 3, 11, 0, 30), {1, 3, 6}),
    ],
)
def test_birthday_is_local_on_both_sides_of_midnight_utc(
    engine: Engine, settings: Settings, as_of: datetime, expected: set[int]
) -> None:
    add_customer(engine, 1, timezone="Pacific/Kiritimati", birth_date=date(1990, 3, 11))
    add_customer(engine, 2, timezone="Pacific/Kiritimati", birth_date=date(1990, 3, 10))
    add_customer(engine, 3, timezone="Pacific/Pago_Pago", birth_date=date(1985, 3, 10))
    add_customer(engine, 4, timezone="Pacific/Pago_Pago", birth_date=date(1985, 3, 11))
    add_customer(engine, 5, timezone="UTC", birth_date=date(1970, 3, 10))
    add_customer(engine, 6, timezone="UTC", birth_date=date(1970, 3, 11))
    found = members(engine, settings, "birthday", "birthday_year", as_of)
    assert set(found) == expected
    assert set(found.values()) == {"2026"}


def test_birthday_starts_at_local_midnight(engine: Engine, settings: Settings) -> None:
    add_customer(engine, 1, timezone="Pacific/Kiritimati", birth_date=date(1990, 3, 11))
    # Kiritimati is UTC+14: local midnight of 11 March is 10:00 UTC on 10 March.
    before = members(engine, settings, "birthday", "birthday_year", utc(2026, 3, 10, 9, 59))
    at = members(engine, settings, "birthday", "birthday_year", utc(2026, 3, 10, 10, 0))
    assert before == {}
    assert at == {1: "2026"}


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        (utc(2027, 2, 28, 12), {1, 2}),  # common year: 29 Feb celebrated on 28 Feb
        (utc(2027, 3, 1, 12), set()),
        (utc(2028, 2, 28, 12), {2}),  # leap year: 29 Feb waits for its own day
        (utc(2028, 2, 29, 12), {1}),
    ],
)
def test_29_february(
    engine: Engine, settings: Settings, as_of: datetime, expected: set[int]
) -> None:
    add_customer(engine, 1, birth_date=date(2000, 2, 29))
    add_customer(engine, 2, birth_date=date(2001, 2, 28))
    add_customer(engine, 3, birth_date=None)
    assert set(members(engine, settings, "birthday", "birthday_year", as_of)) == expected


def test_null_birth_date_is_never_a_birthday(engine: Engine, settings: Settings) -> None:
    add_customer(engine, 1, birth_date=None)
    for day in range(0, 366, 7):
        as_of = utc(2026, 1, 1, 12) + timedelta(days=day)
        assert members(engine, settings, "birthday", "birthday_year", as_of) == {}


# --- onboarding -----------------------------------------------------------------------------
def test_onboarding_steps_on_local_days_across_a_dst_change(
    engine: Engine, settings: Settings
) -> None:
    # New York springs forward at 07:00 UTC on 8 March 2026 (EST -5 -> EDT -4).
    ny = "America/New_York"
    add_customer(engine, 1, timezone=ny, signup_at=utc(2026, 3, 8, 4, 30))  # 7 Mar 23:30 EST
    add_customer(engine, 2, timezone=ny, signup_at=utc(2026, 3, 8, 5, 30))  # 8 Mar 00:30 EST
    add_customer(engine, 3, timezone=ny, signup_at=utc(2026, 3, 11, 4, 15))  # 11 Mar 00:15 EDT
    add_customer(engine, 4, timezone=ny, signup_at=utc(2026, 3, 4, 4, 30))  # 3 Mar 23:30 EST
    add_customer(engine, 5, timezone=ny, signup_at=utc(2026, 3, 4, 5, 30))  # 4 Mar 00:30 EST
    add_customer(engine, 6, timezone=ny, signup_at=utc(2026, 3, 11, 5, 0))  # after as_of
    as_of = utc(2026, 3, 11, 4, 30)  # 11 March 00:30 EDT
    found = members(engine, settings, "onboarding", "onboarding_step", as_of)
    assert found == {2: "day3", 3: "day0", 5: "day7"}


def test_onboarding_custom_days(engine: Engine, settings: Settings) -> None:
    add_customer(engine, 1, signup_at=utc(2026, 3, 9, 10))
    add_customer(engine, 2, signup_at=utc(2026, 3, 8, 10))
    ref = {"use": "onboarding", "params": {"days": [1]}}
    found = members(engine, settings, ref, "tenure_days", utc(2026, 3, 10, 10))
    assert found == {1: "1"}


# --- lapsed ---------------------------------------------------------------------------------
def test_lapsed_after_n_local_days_keyed_by_the_episode(engine: Engine, settings: Settings) -> None:
    as_of = utc(2026, 6, 1, 12)
    tokyo = "Asia/Tokyo"  # UTC+9: the last order's local date differs from its UTC date
    add_customer(engine, 1, timezone=tokyo)
    add_order(engine, 1, 1, placed_at=utc(2026, 3, 2, 16))  # 3 March local: 90 days ago
    add_customer(engine, 2, timezone=tokyo)
    add_order(engine, 2, 2, placed_at=utc(2026, 3, 3, 16))  # 4 March local: 89 days ago
    add_customer(engine, 3)
    add_order(engine, 3, 3, placed_at=utc(2025, 1, 1))
    add_order(engine, 4, 3, placed_at=utc(2026, 5, 30))  # ordered again: not lapsed
    add_customer(engine, 4)  # never ordered: not lapsed
    add_customer(engine, 5)
    add_order(engine, 5, 5, placed_at=utc(2025, 1, 1))
    add_order(engine, 6, 5, placed_at=utc(2026, 5, 30), status="cancelled")  # doesn't count
    found = members(engine, settings, "lapsed", "lapse_started_on", as_of)
    assert found == {1: "2026-03-03", 5: "2025-01-01"}
    shorter = {"use": "lapsed", "params": {"days": 30}}
    assert set(members(engine, settings, shorter, "lapse_started_on", as_of)) == {1, 2, 5}


def test_first_order_today_is_not_lapsed_and_later_orders_are_ignored(
    engine: Engine, settings: Settings
) -> None:
    as_of = utc(2026, 6, 1, 12)
    add_customer(engine, 1, signup_at=utc(2025, 1, 1))
    add_order(engine, 1, 1, placed_at=utc(2026, 6, 1, 9))  # first order, today
    add_customer(engine, 2, signup_at=utc(2025, 1, 1))
    add_order(engine, 2, 2, placed_at=utc(2025, 2, 1))
    add_order(engine, 3, 2, placed_at=utc(2026, 6, 1, 13))  # after as_of: not yet
    found = members(engine, settings, "lapsed", "lapse_started_on", as_of)
    assert found == {2: "2025-02-01"}
    ref = {
        "rule": {"feature": "days_since_last_order", "op": "eq", "value": 0},
        "occurrence_key": "last_order_local_date",
    }
    assert members(engine, settings, ref, "order_count", as_of) == {1: "1"}


# --- feedback -------------------------------------------------------------------------------
def test_feedback_order_delivered_exactly_n_local_days_ago(
    engine: Engine, settings: Settings
) -> None:
    as_of = utc(2026, 6, 10, 12)  # Kiritimati: 11 June 02:00; Pago Pago: 10 June 01:00
    add_customer(engine, 1, timezone="Pacific/Kiritimati")
    delivered = {"status": "delivered", "placed_at": utc(2026, 5, 30)}
    add_order(engine, 11, 1, delivered_at=utc(2026, 6, 3, 10), **delivered)  # 4 Jun local: 7 d
    add_order(engine, 12, 1, delivered_at=utc(2026, 6, 3, 9, 59), **delivered)  # 3 Jun: 8 days
    add_customer(engine, 2, timezone="Pacific/Pago_Pago")
    add_order(engine, 21, 2, delivered_at=utc(2026, 6, 3, 11), **delivered)  # 3 Jun local: 7 d
    add_order(engine, 22, 2, delivered_at=utc(2026, 6, 4, 11), **delivered)  # 4 Jun: 6 days
    add_order(engine, 23, 2, delivered_at=utc(2026, 6, 3, 12), status="returned")
    frames = list(
        segments.audience(
            engine,
            spec_for("feedback", "order_id", ["order_id", "order_amount", "order_placed_at"]),
            as_of,
            settings,
        )
    )
    frame = pd.concat(frames)
    assert list(zip(frame["customer_id"], frame["occurrence_key"], strict=True)) == [
        (1, "11"),
        (2, "21"),
    ]
    assert list(frame["order_amount"]) == [50.0, 50.0]
    assert list(frame["order_placed_at"]) == [pd.Timestamp("2026-05-30", tz="UTC")] * 2


# --- loyalty --------------------------------------------------------------------------------
def test_loyalty_tier_keyed_by_the_tier_reached(engine: Engine, settings: Settings) -> None:
    for customer_id, points in enumerate([999, 1_000, 4_999, 5_000, 15_000], start=1):
        add_customer(engine, customer_id, loyalty_points=points)
    found = members(engine, settings, "loyalty_tier_up", "loyalty_tier", utc(2026, 6, 1))
    assert found == {2: "silver", 3: "silver", 4: "gold", 5: "platinum"}


# --- bad input ------------------------------------------------------------------------------
def test_bad_emails_and_timezones_are_flagged_not_dropped(
    engine: Engine, settings: Settings
) -> None:
    birthday = date(1990, 6, 1)
    add_customer(engine, 1, birth_date=birthday, email=None)
    add_customer(engine, 2, birth_date=birthday, email="two@@example.com")
    add_customer(engine, 3, birth_date=birthday, email="no-at-sign.example.com")
    add_customer(engine, 4, birth_date=birthday, email="")
    add_customer(engine, 5, birth_date=birthday, timezone="Mars/Olympus_Mons")
    add_customer(engine, 6, birth_date=birthday, timezone=None)
    add_customer(engine, 7, birth_date=birthday, timezone="Asia/Tokyo", locale=None)
    frame = pd.concat(
        segments.audience(
            engine, spec_for("birthday", "birthday_year"), utc(2026, 6, 1, 5), settings
        )
    ).set_index("customer_id")
    assert list(frame.index) == [1, 2, 3, 4, 5, 6, 7]
    assert frame["email_reason"].to_dict() == {
        1: "missing_email",
        2: "malformed_email",
        3: "malformed_email",
        4: "missing_email",
        5: None,
        6: None,
        7: None,
    }
    assert frame["email_valid"].to_dict() == {i: i > 4 for i in range(1, 8)}
    assert frame.loc[[5, 6, 7], "timezone"].tolist() == ["UTC", "UTC", "Asia/Tokyo"]
    assert frame.loc[[5, 6, 7], "timezone_valid"].tolist() == [False, False, True]
    assert frame.loc[7, "locale"] is None


def test_audience_columns_and_no_writes(engine: Engine, settings: Settings) -> None:
    add_customer(engine, 1, loyalty_points=6_000, locale="hy", timezone="Asia/Yerevan")
    spec = spec_for("loyalty_tier_up", "loyalty_tier", ["loyalty_tier", "loyalty_points"])
    (frame,) = segments.audience(engine, spec, utc(2026, 6, 1), settings)
    assert list(frame.columns) == [
        "customer_id",
        "occurrence_key",
        "email",
        "email_valid",
        "email_reason",
        "first_name",
        "last_name",
        "locale",
        "timezone",
        "timezone_valid",
        "marketing_consent",
        "loyalty_tier",
        "loyalty_points",
    ]
    row = frame.iloc[0]
    assert (row.customer_id, row.occurrence_key, row.locale, row.loyalty_points) == (
        1,
        "gold",
        "hy",
        6_000,
    )
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.send_ledger)).scalar() == 0


def test_audience_chunks_cover_everyone_once(engine: Engine, settings: Settings) -> None:
    for customer_id in range(1, 24):
        add_customer(engine, customer_id, loyalty_points=2_000)
    spec = spec_for("loyalty_tier_up", "loyalty_tier")
    chunks = list(segments.audience(engine, spec, utc(2026, 6, 1), settings, chunk_size=5))
    assert [len(chunk) for chunk in chunks] == [5, 5, 5, 5, 3]
    assert pd.concat(chunks)["customer_id"].tolist() == list(range(1, 24))


# --- loading errors -------------------------------------------------------------------------
@pytest.fixture
def segments_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(segments, "SEGMENTS_DIR", tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"feature": "shoe_size", "op": "eq", "value": 3},
            "rule.all[1]: unknown feature 'shoe_size'",
        ),
        (
            {"feature": "order_count", "op": "approx", "value": 3},
            "rule.all[1]: unknown operator 'approx'",
        ),
        (
            {"feature": "order_count", "op": "ge", "value": "$missing"},
            "unknown parameter '$missing'",
        ),
        ({"feature": "order_count", "op": "days_ago", "value": 3}, "local date features only"),
        ({"feature": "order_id", "op": "eq", "value": 3}, "needs grain: order"),
        ({"feature": "order_count", "op": "ge", "value": "many"}, "expected a number"),
    ],
)
def test_bad_rules_fail_at_load_naming_file_and_rule(
    segments_dir: Path, rule: dict[str, Any], message: str
) -> None:
    path = segments_dir / "broken.yaml"
    body = {
        "description": "broken",
        "occurrence_key": "lapse_started_on",
        "rule": {"all": [{"feature": "order_count", "op": "ge", "value": 1}, rule]},
    }
    path.write_text(__import__("yaml").safe_dump(body), encoding="utf-8")
    with pytest.raises(segments.SegmentError) as caught:
        segments.load_segment("broken")
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_unknown_segment_and_params() -> None:
    with pytest.raises(segments.SegmentError, match="unknown segment 'nope'"):
        segments.load_segment("nope")
    with pytest.raises(segments.SegmentError, match=r"unknown params \['weeks'\]"):
        segments.load_segment({"use": "lapsed", "params": {"weeks": 3}})


def test_every_builtin_segment_loads() -> None:
    names = segments.builtin_names()
    assert {"onboarding", "lapsed", "birthday", "feedback", "loyalty_tier_up"} <= set(names)
    for name in names:
        assert segments.load_segment(name).name == name


# --- holdout --------------------------------------------------------------------------------
def test_holdout_is_deterministic_chunk_independent_and_proportional() -> None:
    ids = pd.Series(range(1, 100_001))
    mask = segments.holdout_mask(ids, "birthday", 10.0)
    chunked = pd.concat(
        segments.holdout_mask(ids.iloc[i : i + 7_000], "birthday", 10.0)
        for i in range(0, len(ids), 7_000)
    )
    assert mask.equals(chunked)
    assert 0.095 < mask.mean() < 0.105
    other = segments.holdout_mask(ids, "lapsed", 10.0)
    assert 0.005 < (mask & other).mean() < 0.015  # independent between campaigns
    assert not segments.holdout_mask(ids, "birthday", 0.0).any()
    smaller = segments.holdout_mask(ids, "birthday", 5.0)
    assert not (smaller & ~mask).any()  # a larger holdout contains a smaller one


def test_counts_match_the_audience(engine: Engine, settings: Settings) -> None:
    add_customer(engine, 1, birth_date=date(1990, 6, 1), loyalty_points=1_500)
    add_customer(engine, 2, birth_date=date(1990, 6, 2), signup_at=utc(2026, 6, 1, 8))
    as_of = utc(2026, 6, 1, 12)
    found = segments.counts(engine, as_of, settings, ["birthday", "loyalty_tier_up", "onboarding"])
    assert found == {"birthday": 1, "loyalty_tier_up": 1, "onboarding": 1}


def test_segment_for_checks_the_spec_fields() -> None:
    assert segments.segment_for(spec_for("feedback", "order_id", ["order_amount"])).grain == "order"
    with pytest.raises(segments.SegmentError, match="occurrence_key: unknown feature 'step'"):
        segments.segment_for(spec_for("onboarding", "step"))
    with pytest.raises(segments.SegmentError, match="template_fields: feature 'order_id' needs"):
        segments.segment_for(spec_for("birthday", "birthday_year", ["order_id"]))


def test_shipped_campaign_specs_fit_their_segments() -> None:
    specs = load_campaigns(load_settings().campaigns_dir).specs
    for spec in specs.values():
        segments.segment_for(spec)


def test_cli_counts_and_samples_without_sending(
    engine: Engine, warehouse_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    add_customer(engine, 1, birth_date=date(1990, 6, 1), first_name="Ani")
    add_customer(engine, 2, birth_date=date(1990, 6, 2))
    args = ["--warehouse", warehouse_url, "segments", "--as-of", "2026-06-01T12:00:00"]
    assert cli.main([*args, "--segment", "birthday", "--segment", "onboarding"]) == 0
    out = capsys.readouterr().out
    assert "birthday: 1 (" in out and "Ani" in out
    assert "onboarding: 0 (" in out
    assert cli.main([*args, "--segment", "nope"]) == 2
    assert "unknown segment 'nope'" in capsys.readouterr().err
    assert cli.main(["--warehouse", warehouse_url, "features", "--as-of", "2026-06-01"]) == 0
    assert "customer_features: 2 customers as of 2026-06-01 00:00 UTC" in capsys.readouterr().out
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.send_ledger)).scalar() == 0
