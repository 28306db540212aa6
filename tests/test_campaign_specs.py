"""Campaign specs: the shipped ones are valid; a broken one is refused naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lifecycle.core.campaigns import SpecError, load_campaigns, load_spec
from lifecycle.core.config import load_settings

SHIPPED = load_settings().campaigns_dir

VALID = {
    "id": "winback",
    "description": "Come back",
    "segment": {"use": "lapsed", "params": {"days": 60}},
    "template": "reengagement",
    "occurrence_key": "lapse_started_on",
    "sender": {"email": "offers@example.com"},
}


def write(directory: Path, spec: dict | str, name: str = "winback") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec), encoding="utf-8")
    return path


def test_the_five_campaigns_ship_and_are_valid() -> None:
    campaigns = load_campaigns(SHIPPED)
    assert campaigns.errors == {}
    specs = campaigns.specs
    assert {"onboarding", "reengagement", "birthday", "feedback", "loyalty"} <= set(specs)
    for spec in specs.values():
        assert spec.schedule.cron or spec.schedule.after_features, spec.id
        assert spec.policies.requires_consent, spec.id


def test_onboarding_template_follows_its_occurrence_key() -> None:
    spec = load_campaigns(SHIPPED).specs["onboarding"]
    assert [spec.template_for(step) for step in ("day0", "day3", "day7")] == [
        "onboarding/day0",
        "onboarding/day3",
        "onboarding/day7",
    ]


def test_a_minimal_spec_gets_safe_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, VALID))
    assert spec.policies.requires_consent
    assert spec.policies.send_window is not None
    assert spec.schedule.cron is None and not spec.schedule.after_features


@pytest.mark.parametrize(
    ("change", "field", "hint"),
    [
        ({"schedul": {"cron": "0 9 * * *"}}, "schedul", "did you mean 'schedule'"),
        ({"delivery": {"batchsize": 10}}, "delivery.batchsize", "did you mean 'batch_size'"),
        ({"schedule": {"cron": "0 25 * * *"}}, "schedule.cron", "not a cron expression"),
        ({"schedule": {"cron": "every day"}}, "schedule.cron", "5 fields"),
        ({"schedule": {"timezone": "Yerevan"}}, "schedule.timezone", "unknown IANA timezone"),
        ({"sender": {"email": "offers-at-example"}}, "sender.email", "email"),
        ({"policies": {"holdout_percent": 80}}, "policies.holdout_percent", "50"),
        (
            {"policies": {"send_window": {"start": "20:00", "end": "09:00"}}},
            "policies.send_window",
            "start before it ends",
        ),
        ({"delivery": {"max_active_batches": 0}}, "delivery.max_active_batches", "1"),
        ({"default_locale": "fr"}, "default_locale", "'en'"),
        ({"id": "WinBack"}, "id", "pattern"),
        ({"id": "other"}, "id", "file name"),
        ({"template": "Re Engagement"}, "template", "not a template folder"),
        ({"template": "onboarding/{step}"}, "template", "{occurrence_key}"),
        ({"segment": None}, "segment", "segment name"),
        ({"segment": ["lapsed"]}, "segment", "{use: <segment>"),
    ],
)
def test_invalid_spec_names_the_file_and_the_field(
    tmp_path: Path, change: dict, field: str, hint: str
) -> None:
    path = write(tmp_path, {**VALID, **change})
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:")
    assert f"'{field}'" in message
    assert hint in message


def test_a_schedule_too_sparse_for_the_send_window_is_refused(tmp_path: Path) -> None:
    daily = {**VALID, "schedule": {"cron": "0 10 * * *", "timezone": "Asia/Yerevan"}}
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, daily))
    assert (
        "schedule.cron '0 10 * * *' leaves up to 24 h between runs, longer than the "
        "09:00-20:00 send window (11 h)"
    ) in str(caught.value)
    weekdays = {**VALID, "schedule": {"cron": "0 9-20 * * 1-5"}}
    with pytest.raises(SpecError, match="up to 61 h between runs"):  # Friday 20:00 to Monday 09:00
        load_spec(write(tmp_path, weekdays))


@pytest.mark.parametrize(
    "change",
    [
        {"schedule": {"cron": "0 */6 * * *"}},  # 6 h gaps, 11 h window
        {"schedule": {"cron": "0 10 * * *", "after_features": True}},  # hourly via features
        {"schedule": {"cron": "0 10 * * *"}, "policies": {"send_window": None}},
        {"schedule": {"cron": "0 */12 * * *"}, "policies": {"send_window": {"start": "08:00"}}},
    ],
)
def test_a_schedule_that_reaches_every_window_is_accepted(tmp_path: Path, change: dict) -> None:
    assert load_spec(write(tmp_path, {**VALID, **change})).schedule.cron


def test_missing_required_fields_are_all_listed(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "winback", "description": "x"})
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    for field in ("segment", "template", "occurrence_key", "sender"):
        assert f"field '{field}': Field required" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "hint"),
    [("id: [unclosed", "not valid YAML"), ("- just\n- a list\n", "expected a mapping")],
)
def test_unreadable_yaml_names_the_file(tmp_path: Path, text: str, hint: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError, match=hint) as caught:
        load_spec(path)
    assert str(path) in str(caught.value)


def test_a_broken_spec_disables_its_own_campaign_only(tmp_path: Path) -> None:
    write(tmp_path, VALID)
    broken = write(
        tmp_path, {**VALID, "id": "birthday", "delivery": {"rate_per_second": 0}}, name="birthday"
    )
    campaigns = load_campaigns(tmp_path)
    assert set(campaigns.specs) == {"winback"}
    assert campaigns.ids == ["birthday", "winback"]
    with pytest.raises(SpecError) as alone:
        load_spec(broken)
    error = str(alone.value)
    assert error.startswith(f"{broken}: field 'delivery.rate_per_second': ")
    assert campaigns.errors == {broken: error}
    assert campaigns.spec("winback") == campaigns.specs["winback"]
    assert campaigns.spec("nosuchcampaign") is None
    with pytest.raises(SpecError) as caught:
        campaigns.spec("birthday")
    assert str(caught.value) == error
