"""Planning policies: local send windows, and the skip reasons on a real warehouse."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, insert

from lifecycle.core import policies, segments
from lifecycle.core.campaigns import CampaignSpec, SendWindow
from lifecycle.store import runs
from lifecycle.store.schema import send_ledger, suppressions

AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
WINDOW = SendWindow(start=time(9), end=time(20))


def one(zone: str, as_of: datetime = AS_OF, window: SendWindow | None = WINDOW) -> pd.Series:
    return policies.schedule(pd.Series([zone]), as_of, window).iloc[0]


def test_inside_the_window_sends_now_and_expires_after_the_next_local_day() -> None:
    row = one("Asia/Yerevan")  # 16:00 local
    assert row["in_window"] and row["send_after"] == AS_OF
    assert row["expires_at"] == datetime(2026, 11, 25, 20, 0, tzinfo=UTC)  # 26 Nov 00:00 +04


def test_before_the_window_waits_for_the_local_morning() -> None:
    row = one("America/Los_Angeles")  # 04:00 local
    assert not row["in_window"]
    assert row["send_after"] == datetime(2026, 11, 24, 17, 0, tzinfo=UTC)  # 09:00 -08
    assert row["expires_at"] == datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def test_after_the_window_waits_for_the_next_local_morning() -> None:
    evening = one("Asia/Tokyo", as_of=datetime(2026, 11, 24, 12, 30, tzinfo=UTC))  # 21:30 +09
    assert not evening["in_window"]
    assert evening["send_after"] == datetime(2026, 11, 25, 0, 0, tzinfo=UTC)  # 25 Nov 09:00 +09


def test_window_opening_on_a_dst_change_day() -> None:
    # 8 March 2026: New York springs forward at 02:00; 09:00 that day is EDT (-04).
    row = one("America/New_York", as_of=datetime(2026, 3, 8, 6, 30, tzinfo=UTC))
    assert row["send_after"] == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)


def test_no_window_means_now_and_unknown_zone_means_utc() -> None:
    assert one("Asia/Yerevan", window=None)["send_after"] == AS_OF
    assert one("Mars/Olympus")["send_after"] == one("UTC")["send_after"]


def spec(**policy: Any) -> CampaignSpec:
    return CampaignSpec.model_validate(
        {
            "id": "welcome",
            "description": "d",
            "segment": "onboarding",
            "template": "t",
            "occurrence_key": "onboarding_step",
            "sender": {"email": "hello@shop.example"},
            "policies": {"holdout_percent": 0, "send_window": None, **policy},
            "delivery": {"asm_group_id": 42},
        }
    )


def audience(ids: list[int], **columns: Any) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "customer_id": ids,
            "occurrence_key": "day0",
            "email": [f"c{i}@example.am" for i in ids],
            "email_valid": True,
            "email_reason": None,
            "timezone": "Asia/Yerevan",
            "marketing_consent": True,
        }
    )
    for name, values in columns.items():
        frame[name] = values
    return frame


def reasons(engine: Engine, frame: pd.DataFrame, campaign: CampaignSpec) -> list[str | None]:
    with engine.connect() as conn:
        verdict = policies.evaluate(conn, frame, campaign, AS_OF)
    return [r if isinstance(r, str) else None for r in verdict["reason"]]


def test_email_and_consent_reasons_in_order(engine: Engine) -> None:
    frame = audience(
        [1, 2, 3, 4],
        email=[None, "nope", "c3@example.am", "c4@example.am"],
        email_valid=[False, False, True, True],
        email_reason=["missing_email", "malformed_email", None, None],
        marketing_consent=[False, True, False, True],
    )
    assert reasons(engine, frame, spec()) == ["missing_email", "invalid_email", "no_consent", None]
    relaxed = spec(requires_consent=False)
    assert reasons(engine, frame, relaxed)[2] is None


@pytest.mark.parametrize(
    ("scope", "suppressed"), [("global", True), ("group:42", True), ("group:7", False)]
)
def test_suppressions_by_scope(engine: Engine, scope: str, suppressed: bool) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(suppressions).values(
                email="c2@example.am",
                scope=scope,
                reason="unsubscribe",
                source="link",
                created_at=AS_OF,
            )
        )
    frame = audience([1, 2], email=["c1@example.am", "C2@Example.am "])
    assert reasons(engine, frame, spec()) == [None, "suppressed" if suppressed else None]


def test_holdout_is_drawn_among_reachable_customers_only(engine: Engine) -> None:
    ids = list(range(1, 201))
    consent = [i % 4 != 0 for i in ids]
    frame = audience(ids, marketing_consent=consent)
    got = reasons(engine, frame, spec(holdout_percent=20))
    reachable = pd.Series([i for i, ok in zip(ids, consent, strict=True) if ok])
    held = set(reachable[segments.holdout_mask(reachable, "welcome", 20).to_numpy()])
    assert held
    expected = [
        "no_consent" if not ok else "holdout" if i in held else None
        for i, ok in zip(ids, consent, strict=True)
    ]
    assert got == expected


def test_frequency_cap_counts_other_campaigns_and_this_chunk(engine: Engine) -> None:
    with engine.begin() as conn:
        run_id = runs.ensure_run(conn, "other", "r", AS_OF, False, AS_OF)
        conn.execute(
            insert(send_ledger),
            [
                {
                    "campaign_id": "other",
                    "occurrence_key": "x",
                    "customer_id": 1,
                    "run_id": run_id,
                    "status": "sent",
                    "template": "t",
                    "planned_at": AS_OF - timedelta(days=1),
                    "sent_at": AS_OF - timedelta(days=1),
                },
                {
                    "campaign_id": "other",
                    "occurrence_key": "y",
                    "customer_id": 2,
                    "run_id": run_id,
                    "status": "sent",
                    "template": "t",
                    "planned_at": AS_OF - timedelta(days=9),
                    "sent_at": AS_OF - timedelta(days=9),  # outside the 7-day window
                },
            ],
        )
    frame = audience([1, 2, 3, 3])  # customer 3 twice (two occurrences in one run)
    frame["occurrence_key"] = ["day0", "day0", "a", "b"]
    capped = spec(frequency_cap={"max_emails": 1, "days": 7})
    assert reasons(engine, frame, capped) == ["frequency_cap", None, None, "frequency_cap"]
