"""`unknown` rows resolved from SendGrid's events, finalize's verdict on them, and the safe
`lifecycle requeue-unknown`, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from lifecycle import cli
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.feedback import events
from lifecycle.run.finalize import finalize, unknown_hint
from lifecycle.store import ledger, runs, unknown
from lifecycle.store.schema import engagement_events, send_ledger
from lifecycle.store.states import RunStatus

NOW = datetime.now(UTC).replace(microsecond=0)
SPEC = CampaignSpec.model_validate(
    {
        "id": "onboarding",
        "description": "welcome series",
        "segment": "onboarding",
        "template": "onboarding/{occurrence_key}",
        "occurrence_key": "onboarding_step",
        "sender": {"email": "hello@shop.example", "name": "Shop"},
    }
)
WEBHOOK_KEY = "the-webhook-verification-key"  # only its presence matters here


def add_rows(
    engine: Engine, statuses: dict[int, tuple[str, timedelta]]
) -> tuple[int, dict[int, int]]:
    """A run with one ledger row per customer: {customer: (status, attempted this long ago)}."""
    with engine.begin() as conn:
        run_id = runs.ensure_run(conn, "onboarding", "r1", NOW, False, NOW)
        ledger.insert_rows(
            conn,
            [
                {
                    "campaign_id": "onboarding",
                    "occurrence_key": "day0",
                    "customer_id": customer,
                    "run_id": run_id,
                    "status": status,
                    "template": "onboarding/day0",
                    "email": f"Customer{customer}@Example.am",
                    "planned_at": NOW - age,
                    "claimed_at": NOW - age,
                    "claimed_by": "attempt-1",
                    "attempts": 1,
                    "reason": "timeout" if status == "unknown" else None,
                }
                for customer, (status, age) in statuses.items()
            ],
        )
        ids = dict(conn.execute(select(send_ledger.c.customer_id, send_ledger.c.id)).all())
    return run_id, ids


def webhook_event(row_id: int, name: str = "processed", **changes: Any) -> dict[str, Any]:
    customer = changes.pop("customer", None)
    return {
        "event": name,
        "email": f"customer{customer or row_id}@example.am",
        "timestamp": int(NOW.timestamp()) - 60,
        "sg_event_id": f"{name}-{row_id}-{json.dumps(changes, sort_keys=True)}",
        "sg_message_id": f"msg{row_id}.filter0001",
        "send_id": str(row_id),
        "campaign": "onboarding",
        **changes,
    }


def ingest(engine: Engine, *batch: dict[str, Any]) -> events.IngestResult:
    return events.ingest_body(engine, json.dumps(list(batch)).encode(), NOW)


def ledger_by_customer(engine: Engine) -> dict[int, Any]:
    with engine.connect() as conn:
        return {r.customer_id: r for r in conn.execute(select(send_ledger))}


@pytest.mark.parametrize(
    "name", ["processed", "delivered", "deferred", "bounce", "dropped", "open", "click"]
)
def test_an_accepted_message_event_resolves_its_unknown_row_as_sent(
    engine: Engine, name: str
) -> None:
    _, ids = add_rows(engine, {1: ("unknown", timedelta(minutes=5))})
    # The event's address differs in case only: the same inbox.
    result = ingest(engine, webhook_event(ids[1], name, customer=1))
    row = ledger_by_customer(engine)[1]
    assert result.resolved_unknown == 1
    assert (row.status, row.resolved_by, row.reason) == ("sent", name, "timeout")
    assert row.resolved_at == NOW - timedelta(seconds=60)
    assert row.sent_at == row.claimed_at and row.message_id == f"msg{ids[1]}"
    with engine.connect() as conn:
        assert row.resolved_event_id == conn.execute(select(engagement_events.c.id)).scalar_one()


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"campaign": "birthday"}, id="other-campaign"),
        pytest.param({"customer": 99}, id="other-address"),
        pytest.param({"send_id": "12345"}, id="another-send-id"),
    ],
)
def test_an_event_that_does_not_match_the_row_resolves_nothing(
    engine: Engine, changes: dict[str, Any]
) -> None:
    _, ids = add_rows(engine, {1: ("unknown", timedelta(minutes=5))})
    assert ingest(engine, webhook_event(ids[1], **changes)).resolved_unknown == 0
    assert ledger_by_customer(engine)[1].status == "unknown"


def test_a_simulated_event_proves_nothing(engine: Engine) -> None:
    _, ids = add_rows(engine, {1: ("unknown", timedelta(minutes=5))})
    ingest(engine, webhook_event(ids[1]))
    with engine.begin() as conn:
        conn.execute(update(engagement_events).values(simulated=True))
        conn.execute(update(send_ledger).values(status="unknown", resolved_event_id=None))
        assert unknown.resolve(conn, campaign_id="onboarding") == 0


def test_a_row_that_became_unknown_after_its_event_arrived_is_resolved_at_finalize(
    engine: Engine,
) -> None:
    run_id, ids = add_rows(engine, {1: ("sending", timedelta(minutes=1))})
    assert ingest(engine, webhook_event(ids[1], "delivered")).resolved_unknown == 0
    assert ledger_by_customer(engine)[1].status == "sending"  # the attempt died: no outcome
    outcome = finalize(engine, SPEC, run_id=run_id)
    row = ledger_by_customer(engine)[1]
    assert (row.status, row.resolved_by) == ("sent", "delivered")
    assert outcome.status == RunStatus.SUCCESS
    assert (outcome.counts["unknown"], outcome.counts["unknown_states"]["resolved"]) == (0, 1)


def test_finalize_fails_a_run_while_a_row_is_unknown_and_says_what_it_waits_for(
    engine: Engine, tmp_path: Path
) -> None:
    run_id, ids = add_rows(
        engine,
        {
            1: ("unknown", timedelta(hours=30)),
            2: ("unknown", timedelta(minutes=1)),
            3: ("unknown", timedelta(minutes=1)),
            4: ("sent", timedelta(minutes=1)),
        },
    )
    ingest(engine, webhook_event(ids[3], "open"))
    settings = _settings(tmp_path, webhook=True)
    outcome = finalize(engine, SPEC, run_id=run_id, settings=settings)
    assert outcome.status == RunStatus.FAILED
    assert (outcome.counts["sent"], outcome.counts["unknown"]) == (2, 2)
    states = outcome.counts["unknown_states"]
    assert (states["resolved"], states["awaiting_events"], states["requeueable"]) == (1, 1, 1)
    with engine.connect() as conn:
        assert runs.get_run(conn, run_id).status == RunStatus.FAILED
    hint = unknown_hint("onboarding", outcome.counts)
    assert "1 awaiting SendGrid's events" in hint and "1 requeue-able" in hint
    assert "`lifecycle requeue-unknown onboarding`" in hint
    no_webhook = unknown_hint("onboarding", {**outcome.counts, "unknown_states": {}})
    assert "--id LEDGER_ID" in no_webhook  # without events, only rows a human checked


# --- lifecycle requeue-unknown --------------------------------------------------------------
def _settings(tmp_path: Path, *, webhook: bool) -> Any:
    from lifecycle.core.config import load_settings

    return load_settings(
        home=tmp_path, sendgrid_webhook_public_key=WEBHOOK_KEY if webhook else None
    )


@pytest.fixture
def requeue(
    engine: Engine, warehouse_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Any:
    for name in list(os.environ):
        if name.startswith("LIFECYCLE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LIFECYCLE_HOME", str(tmp_path))
    monkeypatch.setenv("LIFECYCLE_WAREHOUSE_URL", warehouse_url)

    def call(*argv: str, webhook: bool = True, stdin: str | None = None) -> int:
        if webhook:
            monkeypatch.setenv("LIFECYCLE_SENDGRID_WEBHOOK_PUBLIC_KEY", WEBHOOK_KEY)
        else:
            monkeypatch.delenv("LIFECYCLE_SENDGRID_WEBHOOK_PUBLIC_KEY", raising=False)
        if stdin is not None:
            tty = io.StringIO(stdin)
            tty.isatty = lambda: True  # type: ignore[method-assign]
            monkeypatch.setattr("sys.stdin", tty)
        try:
            return cli.main(["requeue-unknown", "onboarding", *argv])
        except SystemExit as exit_info:
            return int(exit_info.code or 0)

    return call


@pytest.fixture
def three_unknown(engine: Engine) -> dict[int, int]:
    """Customer 1: no event for 30 h; 2: attempted a minute ago; 3: its event is stored."""
    _, ids = add_rows(
        engine,
        {
            1: ("unknown", timedelta(hours=30)),
            2: ("unknown", timedelta(minutes=1)),
            3: ("sending", timedelta(hours=30)),
        },
    )
    ingest(engine, webhook_event(ids[3], "delivered"))
    with engine.begin() as conn:  # it became unknown after its event arrived
        conn.execute(update(send_ledger).where(send_ledger.c.id == ids[3]).values(status="unknown"))
    return ids


def statuses(engine: Engine) -> dict[int, str]:
    return {customer: row.status for customer, row in ledger_by_customer(engine).items()}


def test_requeue_unknown_by_default_requeues_only_rows_no_event_showed_for_a_day(
    engine: Engine, requeue: Any, three_unknown: dict[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert requeue("--yes") == 0
    out = capsys.readouterr().out
    assert "1 once-unknown emails resolved as sent" in out
    assert "1 unknown awaiting events" in out and "1 requeue-able" in out
    assert f"ids: {three_unknown[1]}\n" in out
    assert statuses(engine) == {1: "planned", 2: "unknown", 3: "sent"}


def test_requeue_unknown_takes_rows_awaiting_events_only_when_told(
    engine: Engine, requeue: Any, three_unknown: dict[int, int]
) -> None:
    assert requeue("--include-recent", "--yes") == 0
    assert statuses(engine) == {1: "planned", 2: "planned", 3: "sent"}


def test_requeue_unknown_asks_first_and_needs_yes_off_a_terminal(
    engine: Engine, requeue: Any, three_unknown: dict[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    before = statuses(engine)
    assert requeue() == 2  # not at a terminal (pytest's stdin), no --yes
    assert "--yes" in capsys.readouterr().err
    assert requeue(stdin="n\n") == 1
    assert statuses(engine) == {**before, 3: "sent"}  # only the event's resolution
    assert requeue(stdin="y\n") == 0
    assert statuses(engine) == {1: "planned", 2: "unknown", 3: "sent"}


def test_without_a_webhook_requeue_unknown_refuses_all_but_named_rows(
    engine: Engine, requeue: Any, three_unknown: dict[int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert requeue("--yes", webhook=False) == 2
    assert "no event webhook is configured" in capsys.readouterr().err
    assert statuses(engine)[2] == "unknown"
    assert requeue("--id", str(three_unknown[2]), "--yes", webhook=False) == 0
    assert statuses(engine) == {1: "unknown", 2: "planned", 3: "sent"}
