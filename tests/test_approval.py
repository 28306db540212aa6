"""Approval in the engine: what the approver is shown, and what a rejection or expiry does.

The approval step itself (Airflow's human-in-the-loop operator, answered through the REST API)
is driven in tests/test_approval_airflow.py.
"""

from __future__ import annotations

import html
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select
from test_pipeline import AS_OF, add_customers, make_spec, settings, sink  # noqa: F401

from lifecycle.core.campaigns import CampaignSpec, SpecError, load_spec
from lifecycle.core.config import Settings
from lifecycle.devtools.sink.thread import SinkHandle
from lifecycle.run import approval
from lifecycle.run.campaign import run_campaign
from lifecycle.run.deliver import deliver
from lifecycle.run.finalize import finalize
from lifecycle.run.plan import plan
from lifecycle.run.preflight import PreflightError
from lifecycle.store.schema import send_ledger
from lifecycle.store.states import RunStatus
from lifecycle.web import dashboard


def approved_spec(**changes: object) -> CampaignSpec:
    return make_spec(
        approval="required",
        coupon={"discount_percent": 15},
        policies={"holdout_percent": 20},
        **changes,
    )


def planned(engine: Engine, spec: CampaignSpec, settings: Settings, key: str = "run-1"):  # noqa: F811
    return plan(engine, spec, settings, run_key=key, as_of=AS_OF)


def ledger_count(engine: Engine, run_id: int | None = None) -> int:
    query = select(func.count()).select_from(send_ledger)
    if run_id is not None:
        query = query.where(send_ledger.c.run_id == run_id)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_the_approver_sees_audience_skips_holdout_waiting_coupons_and_subjects(
    engine: Engine,
    settings: Settings,  # noqa: F811
) -> None:
    add_customers(engine, 40)
    add_customers(engine, 5, start=100, marketing_consent=False)
    # Los Angeles is at 04:00: outside the 09:00-20:00 window, so these wait.
    add_customers(engine, 6, start=200, timezone="America/Los_Angeles")
    spec = approved_spec()
    result = planned(engine, spec, settings)

    summary = approval.summarize(engine, spec, settings, run_id=result.run_id)

    assert summary.audience == 51
    assert summary.skipped["no_consent"] == 5
    assert summary.holdout == summary.skipped["holdout"] > 0
    assert summary.planned == result.planned == summary.due_now + summary.waiting
    assert summary.waiting == result.waiting > 0
    assert summary.coupons == summary.planned and summary.discount_percent == 15
    assert len(summary.subjects) == 3 and all(summary.subjects)
    assert summary.needs_answer


@pytest.mark.parametrize("answer", [RunStatus.REJECTED, RunStatus.EXPIRED])
def test_a_run_not_approved_sends_nothing_and_a_later_run_plans_its_rows_again(
    engine: Engine,
    settings: Settings,  # noqa: F811
    sink: SinkHandle,  # noqa: F811
    answer: RunStatus,
) -> None:
    add_customers(engine, 30)
    spec = approved_spec()
    first = planned(engine, spec, settings)
    assert first.planned > 0

    released = approval.close(engine, run_id=first.run_id, status=answer, decided_by="ops")
    assert released == first.planned
    assert approval.close(engine, run_id=first.run_id, status=answer, decided_by="ops") == 0
    for batch in first.batches:  # a deliver task that runs anyway sends nothing
        deliver(engine, spec, settings, run_id=first.run_id, batch=batch, attempt="late")
    outcome = finalize(engine, spec, run_id=first.run_id)

    assert sink.state.snapshot() == []
    assert outcome.status == answer
    assert outcome.counts["released"] == first.planned and outcome.counts["sent"] == 0
    assert outcome.counts["decided_by"] == "ops"
    assert ledger_count(engine, first.run_id) == sum(first.skipped.values())  # skips stay

    second = planned(engine, spec, settings, key="run-2")
    assert second.planned == first.planned


def test_lifecycle_run_refuses_a_real_run_that_needs_approval_but_rehearses_it(
    engine: Engine,
    settings: Settings,  # noqa: F811
    sink: SinkHandle,  # noqa: F811
) -> None:
    add_customers(engine, 10)
    spec = approved_spec()
    with pytest.raises(PreflightError, match=r"needs approval.*campaign_onboarding.*--dry-run"):
        run_campaign(engine, spec, settings, as_of=AS_OF)
    rehearsal = run_campaign(engine, spec, settings, as_of=AS_OF, dry_run=True)
    assert rehearsal.outcome.counts["rendered"] > 0
    assert sink.state.snapshot() == [] and ledger_count(engine) == 0


def test_approval_in_a_spec_short_and_long_form(tmp_path) -> None:
    assert approved_spec().approval is not None
    long = make_spec(approval={"approvers": ["ops-lead"], "expires_after_hours": 2})
    assert long.needs_approval and long.approval is not None
    assert long.approval.approvers == ["ops-lead"]
    assert long.approval.expires_after == timedelta(hours=2)
    assert not make_spec().needs_approval
    path = tmp_path / "onboarding.yaml"
    path.write_text(
        "id: onboarding\ndescription: d\nsegment: onboarding\ntemplate: t\n"
        "occurrence_key: k\nsender: {email: a@shop.example}\napproval: yes please\n"
    )
    with pytest.raises(SpecError, match=r"approval.*'approval: required'"):
        load_spec(path)


def test_the_approvers_link_shows_the_runs_first_emails_rendered(
    engine: Engine,
    settings: Settings,  # noqa: F811
) -> None:
    add_customers(engine, 12)
    spec = approved_spec()
    result = planned(engine, spec, settings)
    client = TestClient(dashboard.create_app(settings, dependencies=[]))

    page = client.get(f"/runs/{result.run_id}/preview")

    assert page.status_code == 200
    subjects = approval.summarize(engine, spec, settings, run_id=result.run_id, samples=5).subjects
    assert all(html.escape(subject) in page.text for subject in subjects)
    assert page.text.count("<iframe sandbox") == 5
    assert client.get("/runs/999999/preview").status_code == 404
