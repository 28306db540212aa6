"""One email per inbox: addresses compared trimmed and case-insensitively, on both backends."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, insert, select

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings, load_settings
from lifecycle.devtools.sink.thread import SinkHandle, run_sink_in_thread
from lifecycle.run import plan as plan_module
from lifecycle.run.campaign import run_campaign
from lifecycle.run.deliver import deliver
from lifecycle.run.plan import plan
from lifecycle.store.schema import customers, send_ledger, suppressions

KEY = "SG.inbox-test-key"
AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # 16:00 in Yerevan


@pytest.fixture
def sink() -> Iterator[SinkHandle]:
    with run_sink_in_thread(api_keys=[KEY], reset_after_s=0) as handle:
        yield handle


@pytest.fixture
def settings(warehouse_url: str, sink: SinkHandle, tmp_path: Path) -> Settings:
    return load_settings(
        home=tmp_path,
        warehouse_url=warehouse_url,
        transport="sendgrid",
        sendgrid_api_key=KEY,
        sendgrid_host=sink.url,
        unsubscribe_secret="inbox-test-secret",
    )


def make_spec() -> CampaignSpec:
    return CampaignSpec.model_validate(
        {
            "id": "onboarding",
            "status": "live",
            "description": "welcome series",
            "segment": "onboarding",
            "template": "onboarding/{occurrence_key}",
            "occurrence_key": "onboarding_step",
            "sender": {"email": "hello@shop.example", "name": "Shop"},
            "policies": {"holdout_percent": 0},
            "delivery": {"batch_size": 25},
        }
    )


def add(engine: Engine, emails: dict[int, str], **overrides: Any) -> None:
    rows = [
        {
            "id": customer_id,
            "email": email,
            "first_name": f"Name{customer_id}",
            "locale": "en",
            "timezone": "Asia/Yerevan",
            "signup_at": AS_OF - timedelta(hours=1),
            "marketing_consent": True,
            **overrides,
        }
        for customer_id, email in emails.items()
    ]
    with engine.begin() as conn:
        conn.execute(insert(customers), rows)


def outcomes(engine: Engine) -> dict[int, tuple[str, str | None]]:
    query = select(send_ledger.c.customer_id, send_ledger.c.status, send_ledger.c.reason)
    with engine.connect() as conn:
        return {int(c): (s, r) for c, s, r in conn.execute(query)}


def inboxes(sink: SinkHandle) -> Counter[str]:
    received: Counter[str] = Counter()
    for address, count in sink.state.recipients().items():
        received[address.strip().lower()] += count
    return received


def test_two_customers_of_one_inbox_get_one_email_the_lowest_id(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    add(engine, {7: " Ann@Example.AM", 3: "ann@example.am ", 5: "bob@example.am"})
    add(engine, {9: "ANN@example.am"})
    run_campaign(engine, make_spec(), settings, as_of=AS_OF)
    run_campaign(engine, make_spec(), settings, as_of=AS_OF, run_key="second")

    assert inboxes(sink) == {"ann@example.am": 1, "bob@example.am": 1}
    assert outcomes(engine) == {
        3: ("sent", None),
        5: ("sent", None),
        7: ("skipped", "duplicate_address"),
        9: ("skipped", "duplicate_address"),
    }


def test_the_inbox_keeps_the_customer_planned_first_across_runs_and_chunks(
    engine: Engine, settings: Settings, sink: SinkHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan_module, "PLAN_CHUNK", 2)  # the two 'ann' customers in two chunks
    add(engine, {10: "ann@example.am", 11: "x@example.am", 12: "ANN@example.am"})
    run_campaign(engine, make_spec(), settings, as_of=AS_OF)
    add(engine, {2: "Ann@example.am"})  # a lower id appears after the inbox was mailed
    run_campaign(engine, make_spec(), settings, as_of=AS_OF, run_key="later")

    assert inboxes(sink) == {"ann@example.am": 1, "x@example.am": 1}
    assert outcomes(engine)[10] == ("sent", None)
    assert outcomes(engine)[12] == ("skipped", "duplicate_address")
    assert outcomes(engine)[2] == ("skipped", "duplicate_address")


def test_an_inbox_whose_first_customer_was_not_mailed_still_gets_one_email(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    add(engine, {1: "ann@example.am"}, marketing_consent=False)
    add(engine, {2: "Ann@Example.am"})
    run_campaign(engine, make_spec(), settings, as_of=AS_OF)
    assert inboxes(sink) == {"ann@example.am": 1}
    assert outcomes(engine) == {1: ("skipped", "no_consent"), 2: ("sent", None)}


def test_suppressions_match_whatever_the_case_at_planning_and_at_send_time(
    engine: Engine, settings: Settings, sink: SinkHandle
) -> None:
    add(engine, {1: "Ann@Example.am", 2: "bob@example.am", 3: "cy@example.am"})
    suppressed = {"email": " ANN@example.AM", "scope": "global", "reason": "manual"}
    with engine.begin() as conn:
        conn.execute(insert(suppressions), {**suppressed, "source": "manual", "created_at": AS_OF})
    planned = plan(engine, make_spec(), settings, run_key="r1", as_of=AS_OF)
    with engine.begin() as conn:  # Bob unsubscribes while the run waits to deliver
        conn.execute(
            insert(suppressions),
            {**suppressed, "email": "BOB@Example.am", "source": "link", "created_at": AS_OF},
        )
    for batch in planned.batches:
        deliver(engine, make_spec(), settings, run_id=planned.run_id, batch=batch, attempt="a")

    assert inboxes(sink) == {"cy@example.am": 1}
    assert outcomes(engine) == {
        1: ("skipped", "suppressed"),
        2: ("skipped", "suppressed"),
        3: ("sent", None),
    }


def test_the_warehouse_accepts_the_new_skip_reasons(engine: Engine) -> None:
    row = {
        "campaign_id": "c",
        "customer_id": 1,
        "run_id": 1,
        "status": "skipped",
        "template": "t",
        "planned_at": AS_OF,
    }
    with engine.begin() as conn:
        conn.execute(
            insert(send_ledger),
            [
                {**row, "occurrence_key": "a", "reason": "duplicate_address"},
                {**row, "occurrence_key": "b", "reason": "erased"},
            ],
        )
        stored = pd.DataFrame(conn.execute(select(send_ledger.c.reason)).mappings())
    assert sorted(stored["reason"]) == ["duplicate_address", "erased"]
