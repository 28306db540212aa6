"""Test sends: real audience members' emails, sent only to internal recipients before a run.

They render exactly as the run will (`compose.Composer.email`, with a sample coupon) and are
recorded in `test_sends`, never in the ledger: a test send plans, issues and skips nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime

from sqlalchemy import Engine

from lifecycle.core import segments, variants
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings
from lifecycle.delivery import Message, Transport
from lifecycle.run.clock import now, utc
from lifecycle.run.compose import Composer, make_transport, sample_coupon
from lifecycle.run.rows import EmailRow, from_audience
from lifecycle.store import runs
from lifecycle.store.ledger import Outcome
from lifecycle.store.states import LedgerStatus, SkipReason, TestSendStatus


def send_tests(
    engine: Engine,
    spec: CampaignSpec,
    settings: Settings,
    *,
    run_key: str,
    as_of: datetime,
    recipients: list[str],
    limit: int = 3,
) -> int:
    """Render real audience members' emails and send them only to internal `recipients`.

    Recorded in `test_sends` (one row per customer and recipient); no ledger rows, no coupons
    issued (a sample code is shown). A retry does not resend what was already sent.
    Returns the number of test emails sent (or, in sandbox mode, validated).
    """
    as_of = utc(as_of)
    with engine.begin() as conn:
        run_id = runs.ensure_run(conn, spec.id, run_key, as_of, True, now())
        done = runs.tested(conn, run_id)
    composer = Composer(spec, settings, as_of)
    messages: list[tuple[int, Message]] = []
    for row in audience_sample(engine, spec, settings, as_of, limit):
        rendered = composer.email(row, sample_coupon(spec, as_of, row.variant)).message
        for recipient in recipients:
            if (row.customer_id, recipient) not in done:
                test = dataclasses.replace(
                    rendered,
                    send_id=len(messages) + 1,
                    to_email=recipient,
                    to_name=None,
                    subject=f"[TEST] {rendered.subject}",
                    custom_args={"campaign": spec.id, "test_send": "true"},
                )
                messages.append((row.customer_id, test))
    outbox = settings.outbox_dir / spec.id / "tests" / str(run_id)
    outcomes = asyncio.run(_send_each(make_transport(settings, spec, outbox), messages))
    sent_at = now()
    with engine.begin() as conn:
        runs.record_test_sends(
            conn,
            [
                {
                    "run_id": run_id,
                    "campaign_id": spec.id,
                    "customer_id": customer_id,
                    "recipient": message.to_email,
                    "status": TestSendStatus.SANDBOX
                    if outcome.reason == SkipReason.SANDBOX
                    else TestSendStatus(outcome.status),
                    "message_id": outcome.message_id,
                    "error": outcome.error,
                    "sent_at": sent_at,
                }
                for (customer_id, message), outcome in zip(messages, outcomes, strict=True)
            ],
        )
    return sum(o.status == LedgerStatus.SENT or o.reason == SkipReason.SANDBOX for o in outcomes)


def audience_sample(
    engine: Engine, spec: CampaignSpec, settings: Settings, as_of: datetime, limit: int
) -> list[EmailRow]:
    """The first `limit` audience members with a valid address, as rows to render."""
    rows: list[EmailRow] = []
    for chunk in segments.audience(engine, spec, as_of, settings, chunk_size=max(limit, 1000)):
        valid = chunk[chunk["email_valid"].astype(bool)].head(limit - len(rows))
        assigned = variants.assign(valid["customer_id"].astype(int), spec)
        for record, variant in zip(valid.to_dict("records"), assigned, strict=True):
            # no ledger row: test sends never touch the ledger
            rows.append(from_audience(record, spec, send_id=-(len(rows) + 1), variant=variant))
        if len(rows) >= limit:
            break
    return rows


async def _send_each(transport: Transport, messages: list[tuple[int, Message]]) -> list[Outcome]:
    try:
        return [await transport.send(message) for _, message in messages]
    finally:
        await transport.close()
