"""A/B/n variants: the spec, the assignment, and a run that sends and records each variant."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from sqlalchemy import Engine, select
from test_pipeline import AS_OF, KEY, add_customers, make_spec, sink  # noqa: F401

from lifecycle.core import render, segments, variants
from lifecycle.core.campaigns import CampaignSpec, SpecError, load_campaigns, load_spec
from lifecycle.core.config import Settings, load_settings
from lifecycle.devtools.sink.thread import SinkHandle
from lifecycle.run.campaign import run_campaign
from lifecycle.run.preflight import PreflightError, preflight
from lifecycle.store.schema import coupons, send_ledger

SHIPPED_TEMPLATES = load_settings().templates_dir
AB = [
    {"id": "a", "weight": 50, "subject": "Welcome, {{ first_name }}"},
    {"id": "b", "weight": 50, "subject": {"en": "Hello {{ first_name }}, come in"}},
]
VALID = {
    "id": "winback",
    "description": "Come back",
    "segment": {"use": "lapsed", "params": {"days": 60}},
    "template": "reengagement",
    "occurrence_key": "lapse_started_on",
    "sender": {"email": "offers@example.com"},
    "variants": AB,
}


def write(directory: Path, spec: dict[str, Any]) -> Path:
    path = directory / f"{spec['id']}.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def spec_with(**changes: Any) -> CampaignSpec:
    return CampaignSpec.model_validate({**VALID, **changes})


# --- the spec ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "fix"),
    [
        (
            {"variants": [{"id": "a", "weight": 50}, {"id": "b", "weight": 40}]},
            "field 'variants': weights sum to 90, not 100",
            "a: 50, b: 50",
        ),
        (
            {"variants": [{"id": "a", "weight": 50, "fields": {"headline": "x"}}, AB[1]]},
            "field 'variants.0.fields': unknown template field 'headline'",
            "add it there",
        ),
        ({"variants": [AB[0]]}, "field 'variants'", "at least two"),
        ({"variants": [AB[0], {**AB[1], "id": "a"}]}, "field 'variants'", "distinct ids"),
        (
            {"variants": [AB[0], {**AB[1], "coupon_discount_percent": 30}]},
            "field 'variants.1.coupon_discount_percent'",
            "add 'coupon:'",
        ),
        (
            {"experiment": {"fallback": "c"}},
            "field 'experiment.fallback': 'c' is not a variant",
            "use one of a, b",
        ),
        ({"variants": [{**AB[0], "wieght": 50}, AB[1]]}, "variants.0.wieght", "'weight'"),
    ],
)
def test_a_bad_variant_spec_fails_at_load_with_file_field_and_fix(
    tmp_path: Path, change: dict[str, Any], field: str, fix: str
) -> None:
    path = write(tmp_path, {**VALID, **change})
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and field in message and fix in message, message
    assert load_campaigns(tmp_path).errors == {path: message}


def test_a_variant_without_a_template_fails_at_load(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED_TEMPLATES, tmp_path / "templates")
    variants_ = [AB[0], {**AB[1], "template": "reengagement_short"}]
    path = write(tmp_path, {**VALID, "variants": variants_})
    with pytest.raises(SpecError, match=r"variants\.1\.template': variant 'b' has no template"):
        load_spec(path, tmp_path / "templates")
    shutil.copytree(tmp_path / "templates/reengagement", tmp_path / "templates/reengagement_short")
    assert load_spec(path, tmp_path / "templates").variant("b") is not None


def test_the_shipped_demo_specs_load_with_their_templates() -> None:
    settings = load_settings()
    assert load_campaigns(settings.campaigns_dir, settings.templates_dir).errors == {}


# --- the assignment ------------------------------------------------------------------------


def chi_square(observed: list[int], expected: list[float]) -> float:
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))


def test_assignment_matches_the_weights_over_100k_customers() -> None:
    spec = spec_with(
        variants=[
            {"id": "a", "weight": 50},
            {"id": "b", "weight": 30},
            {"id": "c", "weight": 20},
        ]
    )
    ids = pd.Series(np.arange(1, 100_001))
    counts = variants.assign(ids, spec).value_counts()
    observed = [int(counts[v]) for v in ("a", "b", "c")]
    # chi-square, 2 degrees of freedom: 13.82 is the 0.1% critical value
    assert chi_square(observed, [50_000, 30_000, 20_000]) < 13.82, observed


def test_assignment_is_stable_across_runs_and_chunkings() -> None:
    spec = spec_with()
    ids = pd.Series(np.arange(1, 20_001) * 7919)
    whole = variants.assign(ids, spec)
    chunks = pd.concat(
        variants.assign(ids.iloc[i : i + 2999], spec) for i in range(0, 20_000, 2999)
    )
    shuffled = variants.assign(ids.sample(frac=1, random_state=3), spec).sort_index()
    assert whole.tolist() == chunks.tolist() == shuffled.tolist()
    assert variants.assign(ids, spec_with()).tolist() == whole.tolist()


def test_assignment_is_independent_between_campaigns_and_of_the_holdout() -> None:
    ids = pd.Series(np.arange(1, 100_001))
    one = variants.assign(ids, spec_with(id="winback"))
    other = variants.assign(ids, spec_with(id="birthday"))
    held = segments.holdout_mask(ids, "winback", 50).map({True: "held", False: "kept"})
    for second in (other, held):
        table = pd.crosstab(one, second)
        expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.to_numpy().sum()
        statistic = float(((table.to_numpy() - expected) ** 2 / expected).sum())
        assert statistic < 10.83  # 1 degree of freedom, 0.1%: no dependence


# --- preflight -----------------------------------------------------------------------------


def test_preflight_renders_every_variant_and_locale(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    renderer = render.Renderer(settings)
    spec = spec_with(variants=[AB[0], {**AB[1], "subject": {"hy": "Բարև {{ customer.nickname }}"}}])
    with pytest.raises(render.TemplateProblem, match=r"variant 'b'.*nickname"):
        renderer.preflight(spec)
    renderer.preflight(spec_with())


def test_preflight_refuses_a_variant_whose_template_does_not_render(
    engine: Engine, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(SHIPPED_TEMPLATES, templates)
    shutil.copytree(templates / "reengagement", templates / "reengagement_b")
    body = templates / "reengagement_b/ka/body.html"
    broken = body.read_text(encoding="utf-8").replace(
        "{% endblock %}", "{{ data.x }}{% endblock %}"
    )
    body.write_text(broken, encoding="utf-8")
    settings = load_settings(home=tmp_path, templates_dir=templates, warehouse_url=str(engine.url))
    spec = spec_with(variants=[AB[0], {**AB[1], "template": "reengagement_b"}])
    with pytest.raises(PreflightError, match=r"reengagement_b/ka/body.html.*variant 'b'"):
        preflight(engine, spec, settings, as_of=AS_OF)


# --- a run ---------------------------------------------------------------------------------


@pytest.fixture
def settings(warehouse_url: str, sink: SinkHandle, tmp_path: Path) -> Settings:  # noqa: F811
    return load_settings(
        home=tmp_path,
        warehouse_url=warehouse_url,
        transport="sendgrid",
        sendgrid_api_key=KEY,
        sendgrid_host=sink.url,
        unsubscribe_secret="variants-test-unsubscribe-secret",
    )


def test_a_run_records_each_variant_in_the_ledger_and_custom_args(
    engine: Engine,
    settings: Settings,
    sink: SinkHandle,  # noqa: F811
) -> None:
    ids = add_customers(engine, 120)
    spec = make_spec(
        policies={"holdout_percent": 20},
        coupon={"discount_percent": 10, "valid_days": 7},
        tracking={"clicks": True, "opens": False},
        variants=[
            {"id": "short", "weight": 50, "subject": "Hi {{ first_name }}"},
            {"id": "long", "weight": 50, "coupon_discount_percent": 25},
        ],
    )
    counts = run_campaign(engine, spec, settings, as_of=AS_OF).outcome.counts
    with engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(select(send_ledger)).mappings())
        issued = dict(conn.execute(select(coupons.c.customer_id, coupons.c.discount_percent)).all())
    held = rows[rows["reason"] == "holdout"]
    sent = rows[rows["status"] == "sent"]
    assert counts["sent"] == len(sent) > 0 and len(held) > 0 and len(sent) + len(held) == len(ids)
    assert held["variant"].isna().all()  # the holdout stays outside the variants
    expected = variants.assign(sent["customer_id"], spec)
    assert sent["variant"].tolist() == expected.tolist()
    assert set(sent["variant"]) == {"short", "long"}

    by_send_id = {int(m["custom_args"]["send_id"]): m for m in sink.state.snapshot()}
    for row in sent.itertuples():
        message = by_send_id[row.id]
        assert message["custom_args"] == {
            "send_id": str(row.id),
            "campaign": spec.id,
            "occurrence_key": row.occurrence_key,
            "variant": row.variant,
        }
        assert message["body"]["tracking_settings"] == {
            "click_tracking": {"enable": True, "enable_text": True},
            "open_tracking": {"enable": False},
        }
        assert f"utm_content={row.variant}" in message["body"]["content"][1]["value"]
        if row.variant == "short":
            assert message["subject"] == f"Hi Name{row.customer_id}"
            assert issued[row.customer_id] == 10
        else:
            assert message["subject"] != f"Hi Name{row.customer_id}"
            assert issued[row.customer_id] == 25
    assert Counter(sent["variant"])["short"] > 20 and Counter(sent["variant"])["long"] > 20


def test_a_spec_without_variants_sends_as_before(
    engine: Engine,
    settings: Settings,
    sink: SinkHandle,  # noqa: F811
) -> None:
    add_customers(engine, 5)
    run_campaign(engine, make_spec(), settings, as_of=AS_OF)
    for message in sink.state.snapshot():
        assert "variant" not in message["custom_args"]
        assert "tracking_settings" not in message["body"]  # the account's own settings apply
    with engine.connect() as conn:
        assert set(conn.execute(select(send_ledger.c.variant)).scalars()) == {None}
