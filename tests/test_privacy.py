"""Privacy requests on both backends: the export holds the person's rows and no one else's; after
an erasure no marketing table holds the address anywhere (every column of every table in the
schema is scanned), and the person is never mailed again."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from lifecycle import cli
from lifecycle.core import addresses, features
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import PROJECT_ROOT, Settings, load_settings
from lifecycle.core.segments import IdRange
from lifecycle.devtools.sink.thread import SinkHandle, run_sink_in_thread
from lifecycle.feedback import events, privacy, surveys, tokens
from lifecycle.feedback import suppressions as suppression_list
from lifecycle.run.campaign import run_campaign
from lifecycle.run.test_sends import send_tests
from lifecycle.store import schema
from lifecycle.store.schema import customers, send_ledger, suppressions

KEY = "SG.privacy-test-key"
AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # 16:00 in Yerevan
PERSON = "ann@example.am"
OTHERS = ["bob@example.am", "cy@example.am"]


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
        unsubscribe_secret="privacy-test-secret",
    )


def make_spec(campaign_id: str = "onboarding") -> CampaignSpec:
    return CampaignSpec.model_validate(
        {
            "id": campaign_id,
            "status": "live",
            "description": "welcome series",
            "segment": "onboarding",
            "template": "onboarding/{occurrence_key}",
            "occurrence_key": "onboarding_step",
            "sender": {"email": "hello@shop.example", "name": "Shop"},
            "policies": {"holdout_percent": 0},
            "delivery": {"batch_size": 25},
            "coupon": {"discount_percent": 10, "valid_days": 7},
        }
    )


def bounce(send_id: int, email: str, n: int) -> dict[str, Any]:
    return {
        "email": email,
        "event": "bounce",
        "type": "bounce",
        "timestamp": int(AS_OF.timestamp()) + n,
        "sg_event_id": f"ev-{n}",
        "sg_message_id": f"msg{n}.filter",
        "send_id": str(send_id),
        "campaign": "onboarding",
        "reason": f"550 5.1.1 <{email}>: user unknown",
    }


@pytest.fixture
def filled(engine: Engine, settings: Settings, sink: SinkHandle) -> Engine:
    """Ann (as customer 1, " Ann@Example.AM"), Bob and Cy: mailed, bounced, suppressed,
    features (published, and staged for the next snapshot), coupons, a test send, a survey
    answer."""
    emails = {1: " Ann@Example.AM", 2: OTHERS[0], 3: OTHERS[1]}
    with engine.begin() as conn:
        conn.execute(
            insert(customers),
            [
                {
                    "id": i,
                    "email": email,
                    "first_name": f"Name{i}",
                    "locale": "en",
                    "timezone": "Asia/Yerevan",
                    "signup_at": AS_OF - timedelta(hours=1),
                    "marketing_consent": True,
                }
                for i, email in emails.items()
            ],
        )
    features.materialize(engine, AS_OF, settings)
    features.partitions(engine, AS_OF, settings, size=2)  # the next snapshot, half built
    features.materialize_range(engine, AS_OF, settings, IdRange())
    run_campaign(engine, make_spec(), settings, as_of=AS_OF)
    send_tests(
        engine,
        make_spec(),
        settings,
        run_key="tests",
        as_of=AS_OF,
        recipients=["qa@shop.example"],
    )
    with engine.connect() as conn:
        send_ids = dict(conn.execute(select(send_ledger.c.customer_id, send_ledger.c.id)).all())
    body = json.dumps([bounce(send_ids[1], "Ann@Example.am", 1), bounce(send_ids[2], OTHERS[0], 2)])
    events.ingest_body(engine, body.encode(), AS_OF)
    with engine.begin() as conn:
        suppression_list.add(
            conn, [suppression_list.row(PERSON, "group:7", "group_unsubscribe", "link", AS_OF)]
        )
    answered = tokens.recipient(engine, send_ids[1])
    assert answered is not None
    surveys.record(engine, answered, 3, f"write to me at {PERSON}", AS_OF)
    return engine


def holding(engine: Engine, needle: str) -> list[str]:
    """Every table.column of every marketing table that holds `needle` (case-insensitively)."""
    found = []
    with engine.connect() as conn:
        for table in schema.marketing.sorted_tables:
            for row in conn.execute(select(table)).mappings():
                for column, value in row.items():
                    if needle in json.dumps(value, default=str).lower():
                        found.append(f"{table.name}.{column}")
    return sorted(set(found))


def test_every_marketing_table_is_erased_or_declared_without_personal_data() -> None:
    declared = set(privacy.TABLES) | set(privacy.NOT_PERSONAL)
    assert set(schema.marketing.tables) <= declared


def test_the_export_holds_the_persons_rows_and_nobody_elses(filled: Engine, settings: Settings):
    held = privacy.export(filled, settings, "  ANN@example.am ")

    assert held["email"] == PERSON and held["customer_ids"] == [1]
    assert [row["customer_id"] for row in held["customer_features"]] == [1]
    assert [(r["customer_id"], r["status"]) for r in held["send_ledger"]] == [(1, "sent")]
    assert [row["customer_id"] for row in held["coupons"]] == [1]
    assert [row["customer_id"] for row in held["test_sends"]] == [1]
    assert [row["score"] for row in held["survey_responses"]] == [3]
    assert [row["event"] for row in held["engagement_events"]] == ["bounce"]
    assert sorted(row["scope"] for row in held["suppressions"]) == ["global", "group:7"]
    assert not any(other in json.dumps(held) for other in OTHERS)
    json.dumps(held)  # JSON as it is, no default= needed


def test_after_an_erasure_no_marketing_table_holds_the_address(
    filled: Engine, settings: Settings, sink: SinkHandle
) -> None:
    assert holding(filled, PERSON)  # the scan finds it before
    changed = privacy.erase(filled, settings, "Ann@Example.am", AS_OF)

    assert holding(filled, PERSON) == []
    assert changed == {
        "customer_features": 1,
        "customer_features_next": 1,
        "send_ledger": 1,
        "engagement_events": 1,
        "suppressions": 2,
        "resubscribes": 0,
        "coupons": 1,
        "test_sends": 1,
        "survey_responses": 1,
    }
    assert all(holding(filled, other) for other in OTHERS)  # nobody else was touched
    with filled.connect() as conn:
        assert conn.execute(select(func.count()).select_from(customers)).scalar_one() == 3
        kept = conn.execute(select(suppressions.c.email, suppressions.c.reason)).all()
    assert (addresses.hashed(PERSON), "erased") in kept

    # The source still lists her: the next campaign skips her and writes nothing of her.
    sent_before = sum(sink.state.recipients().values())
    run_campaign(filled, make_spec("welcome_again"), settings, as_of=AS_OF)
    received = {address.strip().lower() for address in sink.state.recipients()}
    assert sum(sink.state.recipients().values()) == sent_before + 1  # Cy; Bob bounced
    assert PERSON in received  # from the first campaign, before the erasure
    with filled.connect() as conn:
        again = conn.execute(
            select(send_ledger.c.status, send_ledger.c.reason, send_ledger.c.email).where(
                send_ledger.c.campaign_id == "welcome_again", send_ledger.c.customer_id == 1
            )
        ).one()
    assert tuple(again) == ("skipped", "erased", None)

    # SendGrid still reports on her earlier email and lists her address: neither brings it back.
    late = {**bounce(1, "ANN@example.am", 3), "event": "spamreport"}
    assert events.ingest_body(filled, json.dumps([late]).encode(), AS_OF).stored == 1
    with filled.begin() as conn:
        pulled = suppression_list.row(PERSON, "global", "bounce", "sync", AS_OF)
        assert suppression_list.add(conn, [pulled]) == 0
    assert holding(filled, PERSON) == []


def test_an_erasure_stops_rows_planned_but_not_yet_sent(engine: Engine, settings: Settings) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(send_ledger),
            {
                "campaign_id": "c",
                "occurrence_key": "k",
                "customer_id": 5,
                "run_id": 1,
                "status": "planned",
                "template": "t",
                "email": "Ann@example.am",
                "context": {"first_name": "Ann"},
                "planned_at": AS_OF,
                "send_after": AS_OF,
            },
        )
    privacy.erase(engine, settings, PERSON, AS_OF)
    with engine.connect() as conn:
        row = conn.execute(select(send_ledger)).mappings().one()
    assert (row["status"], row["reason"], row["email"], row["context"]) == (
        "skipped",
        "erased",
        None,
        {},
    )


def test_the_commands_print_the_export_and_what_the_erasure_changed(
    filled: Engine, settings: Settings, warehouse_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--warehouse", warehouse_url, "privacy", "export", "--email", PERSON]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["customer_ids"] == [1]

    assert cli.main(["--warehouse", warehouse_url, "privacy", "erase", "--email", PERSON]) == 0
    out = capsys.readouterr().out
    assert "send_ledger: 1 rows pseudonymised" in out and "coupons: 1 rows deleted" in out
    assert holding(filled, PERSON) == []

    assert cli.main(["--warehouse", warehouse_url, "privacy", "erase", "--email", "nobody"]) == 2
    assert "no email address" in capsys.readouterr().err


def readme_commands(title: str) -> list[str]:
    """The lines of the bash blocks in the README section `title`."""
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_the_readme_commands_answer_a_request(
    filled: Engine, warehouse_url: str, tmp_path: Path
) -> None:
    commands = readme_commands("Privacy requests")
    actions = [command.split()[:3] for command in commands]
    assert actions == [["lifecycle", "privacy", "export"], ["lifecycle", "privacy", "erase"]]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "LIFECYCLE_HOME": str(tmp_path / "home"),
        "LIFECYCLE_WAREHOUSE_URL": warehouse_url,
    }
    outputs = [
        subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        for command in commands
    ]
    assert [o.returncode for o in outputs] == [0, 0], [o.stderr for o in outputs]
    exported = json.loads((tmp_path / "ann.json").read_text())
    assert exported["customer_ids"] == [1] and len(exported["send_ledger"]) == 1
    assert "send_ledger: 1 rows pseudonymised" in outputs[1].stdout
    assert holding(filled, PERSON) == []
