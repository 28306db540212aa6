"""Property-based fuzzing (hypothesis) of what comes from outside: webhook bodies, spec YAML,
segment rules, CLI arguments. Whatever the input: a 4xx or a clean one-line error, never a
crash or a 5xx, and nothing stored or half-written.

Bounded and reproducible: few examples, `derandomize=True` (the same examples on every run and
machine), no deadline (the shared CI machine is slow, and timing is not what is tested).
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from test_events import Signer, event

from lifecycle import cli
from lifecycle.core import segments
from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import Settings, load_settings
from lifecycle.core.feature_sql import FEATURES
from lifecycle.devtools import seed
from lifecycle.store import schema, warehouse
from lifecycle.web.public import create_app
from lifecycle.web.server import serve_in_thread

AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# JSON values of every shape, including the awkward ones: huge and negative integers, floats,
# control characters, lone surrogates (json.dumps escapes them as \udxxx), deep nesting.
TEXT = st.sampled_from(["", "\x00", "\ud800", "a\udfffb", "x" * 1000]) | st.text(
    alphabet=st.characters(codec=None, exclude_categories=()), max_size=40
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
EVENT_FIELDS = [
    "event",
    "email",
    "timestamp",
    "sg_event_id",
    "sg_message_id",
    "send_id",
    "campaign",
    "asm_group_id",
    "reason",
    "type",
    "url",
    "status",
]


def counts(engine: Engine) -> tuple[int, ...]:
    tables = (schema.engagement_events, schema.suppressions, schema.send_ledger)
    with engine.connect() as conn:
        return tuple(
            conn.execute(select(func.count()).select_from(table)).scalar_one() for table in tables
        )


# --- webhook bodies -----------------------------------------------------------------------
@st.composite
def event_batches(draw: st.DrawFn) -> bytes:
    """Mostly well-formed batches with a few fields replaced by anything, or any JSON at all."""
    if draw(st.booleans()):
        return json.dumps(draw(JSON)).encode()
    batch = []
    for n in range(draw(st.integers(1, 3))):
        base = event(draw(st.sampled_from(["delivered", "bounce", "open", "unsubscribe"])), n)
        fields = st.sampled_from(EVENT_FIELDS) | TEXT  # SendGrid's fields, and any other
        changes = draw(st.dictionaries(fields, TEXT | JSON, max_size=3))
        batch.append({**base, **changes})
    return json.dumps(batch).encode()


@pytest.fixture
def webhook(warehouse_url: str, tmp_path: Path) -> Iterator[tuple[httpx.Client, Signer, Engine]]:
    """On both backends: PostgreSQL refuses some text SQLite stores (NUL, lone surrogates)."""
    signer = Signer()
    settings_ = load_settings(
        home=tmp_path, warehouse_url=warehouse_url, sendgrid_webhook_public_key=signer.public_key
    )
    with (
        serve_in_thread(create_app(settings_)) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        yield client, signer, warehouse.engine_for(warehouse_url)


@settings(FUZZ, max_examples=100)  # cheap examples, and the input with the most variety
@given(body=event_batches())
def test_any_signed_webhook_body_is_stored_whole_or_refused_with_a_4xx(
    webhook: tuple[httpx.Client, Signer, Engine], body: bytes
) -> None:
    client, signer, engine = webhook
    before = counts(engine)
    response = client.post("/events/sendgrid", content=body, headers=signer.headers(body))
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert counts(engine) == before, "a refused batch stored something"
        assert "\n" not in response.json()["detail"]


# --- spec YAML ----------------------------------------------------------------------------
SHIPPED = load_settings().campaigns_dir
BASE_SPEC = yaml.safe_load((SHIPPED / "reengagement.yaml").read_text(encoding="utf-8"))
YAML_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def spec_texts(draw: st.DrawFn) -> str:
    """A shipped spec with fields (top level or nested) replaced or removed, or any text."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(alphabet=string.printable, max_size=200))
    spec = json.loads(json.dumps(BASE_SPEC))
    for _ in range(draw(st.integers(1, 3))):
        target = spec
        key = draw(st.sampled_from(sorted(spec)))
        if isinstance(spec[key], dict) and spec[key] and draw(st.booleans()):
            target, key = spec[key], draw(st.sampled_from(sorted(spec[key])))
        if draw(st.booleans()):
            target[key] = draw(YAML_VALUE)
        else:
            del target[key]
        if not spec:
            break
    return yaml.safe_dump(spec, allow_unicode=True)


@FUZZ
@given(text=spec_texts())
def test_any_spec_text_is_valid_or_one_error_naming_the_file(tmp_path: Path, text: str) -> None:
    folder = tmp_path / "fuzz-specs"
    folder.mkdir(exist_ok=True)
    path = folder / "reengagement.yaml"
    path.write_text(text, encoding="utf-8")
    loaded = load_campaigns(folder)  # never raises: a bad file is an error of its own
    assert set(loaded.specs) | {p.stem for p in loaded.errors} == {"reengagement"}
    for error in loaded.errors.values():
        assert error.startswith(f"{path}: ")


# --- segment rules ------------------------------------------------------------------------
FEATURE_NAMES = sorted(FEATURES)
LEAF = st.fixed_dictionaries(
    {
        "feature": st.sampled_from(FEATURE_NAMES) | TEXT,
        "op": st.sampled_from([*segments.OPERATORS, "like", ""]),
        "value": YAML_VALUE,
    }
)
RULES = st.recursive(
    LEAF | YAML_VALUE,
    lambda inner: (
        st.builds(lambda parts: {"all": parts}, st.lists(inner, max_size=3))
        | st.builds(lambda parts: {"any": parts}, st.lists(inner, max_size=3))
        | st.builds(lambda part: {"not": part}, inner)
    ),
    max_leaves=5,
)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Settings]:
    path = tmp_path_factory.mktemp("fuzz-warehouse") / "warehouse.db"
    engine = warehouse.make_engine(f"sqlite:///{path}")
    warehouse.upgrade(engine)
    seed.seed(engine, 60, seed=5, as_of=AS_OF)
    return engine, load_settings(warehouse_url=f"sqlite:///{path}")


@FUZZ
@given(rule=RULES, grain=st.sampled_from(["customer", "order"]))
def test_any_segment_rule_is_a_segment_error_or_a_read_only_count(
    seeded: tuple[Engine, Settings], rule: Any, grain: str
) -> None:
    engine, settings_ = seeded
    key = "customer_id" if grain == "customer" else "order_id"
    raw = {"grain": grain, "occurrence_key": key, "rule": rule}
    try:
        segment = segments.load_segment(raw, settings_)
    except segments.SegmentError as error:
        assert str(error).startswith("inline segment")
        return
    before = counts(engine)
    assert segments.count(engine, segment, AS_OF, settings_) >= 0
    assert counts(engine) == before


# --- CLI arguments ------------------------------------------------------------------------
COMMANDS = [
    ["run", "onboarding"],
    ["report"],
    ["segments"],
    ["features"],
    ["seed"],
    ["requeue-unknown", "birthday"],
    ["simulate-events"],
    ["preview", "--all"],
    ["sink"],
]
OPTIONS = [
    "--as-of",
    "--limit",
    "--days",
    "--months",
    "--customers",
    "--sample",
    "--id",
    "--port",
    "--rate-5xx",
    "--slow-ms",
    "--campaign",
    "--out",
    "--format",
]
ARG_VALUES = (
    st.integers(-(10**20), 10**20).map(str)
    | st.floats().map(str)
    | st.sampled_from(["0001-01-01T00:00:00Z", "9999-12-31", "2026-02-30", "now", "", "-"])
    # What a shell passes: no line breaks inside one argument.
    | st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ", max_size=12)
)


@FUZZ
@given(
    command=st.sampled_from(COMMANDS),
    options=st.lists(st.tuples(st.sampled_from(OPTIONS), ARG_VALUES), max_size=3),
)
def test_any_arguments_parse_or_exit_2_with_one_line(
    command: list[str], options: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*command, *(f"{name}={value}" for name, value in options)]
    try:
        cli.build_parser().parse_args(argv)
    except SystemExit as exit_info:
        assert exit_info.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("lifecycle") and "error: " in err[-1], err
        assert "Traceback" not in "\n".join(err)


@FUZZ
@given(
    days=st.integers(-(10**6), 10**6),
    as_of=st.datetimes(
        min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
    ),
)
def test_any_report_arguments_are_a_report_or_a_clean_answer(
    seeded: tuple[Engine, Settings], days: int, as_of: datetime, capsys: pytest.CaptureFixture[str]
) -> None:
    url = seeded[1].warehouse_url
    argv = ["--warehouse", url, "report", "--days", str(days), "--as-of", as_of.isoformat()]
    try:
        code = cli.main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code in (0, 1, 2) and "Traceback" not in err and "unexpected error" not in err, err
    # One line and perhaps a hint (after argparse's usage lines for a bad argument).
    said = [line for line in err.splitlines() if not line.startswith(("usage:", " "))]
    assert len(said) <= 2, err
