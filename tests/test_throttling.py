"""Throttling across campaigns: two campaigns delivering at once share the SendGrid account's
rate. The rate is read from the times the sink recorded each request, not from our clock."""

from __future__ import annotations

import threading
from dataclasses import replace

from sqlalchemy import Engine
from test_pipeline import AS_OF, add_customers, make_spec, settings, sink  # noqa: F401

from lifecycle.core.config import Settings
from lifecycle.devtools.sink.thread import SinkHandle
from lifecycle.run.deliver import deliver
from lifecycle.run.finalize import finalize
from lifecycle.run.plan import plan
from lifecycle.run.rates import task_rate

ACCOUNT_RATE = 120.0  # requests/s for the whole account
SLOTS = 2  # the pool: deliver tasks of all campaigns at once


def busiest_second(times: list[float]) -> int:
    """The most requests the sink received within any one second."""
    times, most, start = sorted(times), 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_two_campaigns_delivering_together_stay_within_the_account_rate(
    engine: Engine,
    settings: Settings,  # noqa: F811
    sink: SinkHandle,  # noqa: F811
) -> None:
    account = replace(settings, sendgrid_rate_per_second=ACCOUNT_RATE, sendgrid_pool_slots=SLOTS)
    add_customers(engine, 180)
    # Each campaign alone may send 2,000/s: only the account's share holds them back.
    fast = {"rate_per_second": 2000, "max_active_batches": 1, "batch_size": 1000}
    specs = [make_spec(delivery=fast), make_spec(id="welcome", delivery=fast)]
    assert [task_rate(spec, account) for spec in specs] == [ACCOUNT_RATE / SLOTS] * 2
    plans = [plan(engine, spec, account, run_key="together", as_of=AS_OF) for spec in specs]
    assert [len(p.batches) for p in plans] == [1, 1]  # one deliver task each, at once

    def deliver_all(index: int) -> None:
        spec, planned = specs[index], plans[index]
        for batch in planned.batches:
            deliver(engine, spec, account, run_id=planned.run_id, batch=batch, attempt="a")

    workers = [threading.Thread(target=deliver_all, args=(i,)) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)

    received = sink.state.snapshot()
    outcomes = [
        finalize(engine, spec, run_id=p.run_id) for spec, p in zip(specs, plans, strict=True)
    ]
    assert [o.counts["sent"] for o in outcomes] == [p.planned for p in plans]
    assert len(received) == sum(p.planned for p in plans) > 2 * ACCOUNT_RATE
    assert set(sink.state.send_ids().values()) == {1}  # nothing sent twice
    by_campaign = {
        name: [m["received_at"] for m in received if m["custom_args"]["campaign"] == name]
        for name in ("onboarding", "welcome")
    }
    # They really delivered together: each one's requests span the other's.
    assert max(map(min, by_campaign.values())) < min(map(max, by_campaign.values()))
    times = [m["received_at"] for m in received]
    # Each task's token bucket may burst by rate/20 requests, and requests reach the sink a few
    # milliseconds apart from when they were let go: a little over the rate within one second.
    burst = SLOTS * max(1.0, ACCOUNT_RATE / SLOTS / 20)
    assert busiest_second(times) <= ACCOUNT_RATE * 1.1 + burst
    overall = (len(times) - 1) / (max(times) - min(times))
    assert overall <= ACCOUNT_RATE * 1.05
