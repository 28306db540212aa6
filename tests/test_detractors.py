"""The built-in `detractors` segment (latest survey answer 0-6 in the last N local days) and the
shipped service-recovery campaign it feeds, run for real (outbox transport) on both warehouses."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from source_rows import add_customer
from sqlalchemy import Engine, insert, select

from lifecycle.core import segments
from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import Settings, load_settings
from lifecycle.feedback import surveys, tokens
from lifecycle.run.campaign import run_campaign
from lifecycle.store.schema import send_ledger, survey_responses

AS_OF = datetime(2026, 12, 3, 12, tzinfo=UTC)  # 12:00 UTC: inside the 10:00-19:00 window


@pytest.fixture
def settings(warehouse_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        home=tmp_path,
        warehouse_url=warehouse_url,
        transport="outbox",
        token_secrets=("detractor-test-secret",),
    )


def answer(engine: Engine, customer_id: int, order: str, score: int, at: datetime) -> int:
    """A feedback email to `customer_id` about `order` (sent once), answered `score` at `at`."""
    ledger = send_ledger.c
    with engine.begin() as conn:
        send_id = (
            conn.execute(
                select(ledger.id).where(
                    ledger.customer_id == customer_id, ledger.occurrence_key == order
                )
            ).scalar()
            or conn.execute(
                insert(send_ledger)
                .values(
                    campaign_id="feedback",
                    occurrence_key=order,
                    customer_id=customer_id,
                    run_id=999,  # no run of the campaign under test
                    status="sent",
                    template="feedback",
                    email=f"c{customer_id}@example.com",
                    planned_at=at - timedelta(days=1),
                    sent_at=at - timedelta(days=1),
                )
                .returning(send_ledger.c.id)
            ).scalar_one()
        )
    found = tokens.recipient(engine, send_id)
    assert found is not None
    surveys.record(engine, found, score, None, at)
    with engine.connect() as conn:
        return conn.execute(
            select(survey_responses.c.id).where(survey_responses.c.send_id == send_id)
        ).scalar_one()


@pytest.fixture
def answered(engine: Engine) -> dict[int, int]:
    """Customer -> the response id that should make them a member."""
    for customer_id in range(1, 9):
        add_customer(engine, customer_id)
    day = timedelta(days=1)
    members = {
        1: answer(engine, 1, "101", 3, AS_OF - 2 * day),
        2: answer(engine, 2, "102", 6, AS_OF - 14 * day),  # 14 local days ago: still in
    }
    answer(engine, 3, "103", 6, AS_OF - 15 * day)  # too long ago
    answer(engine, 4, "104", 7, AS_OF - day)  # a passive
    answer(engine, 5, "105", 2, AS_OF - 3 * day)
    answer(engine, 5, "105", 9, AS_OF - day)  # re-scored: now a promoter
    answer(engine, 6, "106", 9, AS_OF - 5 * day)
    members[6] = answer(engine, 6, "107", 1, AS_OF - day)  # the latest answer counts
    answer(engine, 7, "108", 0, AS_OF + day)  # after as_of
    return members


def test_detractors_segment(engine: Engine, settings: Settings, answered: dict[int, int]) -> None:
    spec = load_campaigns(settings.campaigns_dir).specs["service_recovery"]
    frames = list(segments.audience(engine, spec, AS_OF, settings))
    frame = pd.concat(frames)
    assert dict(zip(frame["customer_id"], frame["occurrence_key"], strict=True)) == {
        customer_id: str(response_id) for customer_id, response_id in answered.items()
    }
    assert dict(zip(frame["customer_id"], frame["survey_score"], strict=True)) == {
        1: 3,
        2: 6,
        6: 1,
    }
    assert frame.set_index("customer_id").loc[6, "survey_occurrence_key"] == "107"
    narrower = segments.load_segment({"use": "detractors", "params": {"days": 7}})
    assert segments.count(engine, narrower, AS_OF, settings) == 2


def test_service_recovery_campaign_mails_each_detractor_once(
    engine: Engine, settings: Settings, answered: dict[int, int]
) -> None:
    spec = load_campaigns(settings.campaigns_dir).specs["service_recovery"]
    assert spec.status == "draft"  # shipped as a draft: a person decides to make it live
    spec = spec.model_copy(update={"status": "live"})
    first = run_campaign(engine, spec, settings, as_of=AS_OF).outcome.counts
    again = run_campaign(engine, spec, settings, as_of=AS_OF + timedelta(hours=1)).outcome.counts
    assert first["sent"] == 3
    assert again.get("sent", 0) == 0

    messages = [
        email.message_from_bytes(path.read_bytes())
        for path in sorted((settings.outbox_dir / "service_recovery").glob("*.eml"))
    ]
    assert sorted(str(m["To"]) for m in messages) == [
        f"First{n} Last <c{n}@example.com>" for n in (1, 2, 6)
    ]
    bodies = {
        str(m["To"]): next(
            part.get_payload(decode=True).decode()
            for part in m.walk()
            if part.get_content_type() == "text/plain"
        )
        for m in messages
    }
    assert "You rated us 1 out of 10 for your order #107" in bodies["First6 Last <c6@example.com>"]
