"""Campaign specs: one YAML file per campaign in `include/campaigns/`.

A spec is data. It names the audience (a segment), the template, what counts as "the same
email" (the occurrence key) and the policies and delivery settings. `load_campaigns()` validates
every file: the valid specs, and for each invalid file a `SpecError` text naming the file and the
field at fault, so one broken file disables its own campaign only.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from lifecycle.core.config import PROJECT_ROOT, check_queue

ID_PATTERN = r"^[a-z][a-z0-9_]{0,40}$"
LOCALES = ("en", "hy", "ka")


class SpecError(ValueError):
    """A campaign spec that cannot be used; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(_Model):
    email: EmailStr
    name: str | None = None


class Schedule(_Model):
    """Cron in a named timezone, and/or after each fresh `customer_features` snapshot."""

    cron: str | None = Field(None, description="cron expression, e.g. '7 9 * * *'")
    timezone: str = "UTC"
    after_features: bool = Field(False, description="also run when new features are published")

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA timezone {value!r}") from exc
        return value

    @field_validator("cron")
    @classmethod
    def _cron_shape(cls, value: str | None) -> str | None:
        if value is not None and (len(value.split()) != 5 or not croniter.is_valid(value)):
            raise ValueError(
                f"{value!r} is not a cron expression: it needs 5 fields "
                "(minute hour day-of-month month weekday), e.g. '0 10 * * *' for 10:00 daily"
            )
        return value


class FrequencyCap(_Model):
    max_emails: int = Field(3, ge=1, description="marketing emails per customer ...")
    days: int = Field(7, ge=1, description="... per rolling window of this many days")


class SendWindow(_Model):
    start: time = time(9, 0)
    end: time = time(20, 0)

    @model_validator(mode="after")
    def _start_before_end(self) -> SendWindow:
        if self.start >= self.end:
            raise ValueError(
                f"the window must start before it ends, got {self.start:%H:%M}-{self.end:%H:%M}"
            )
        return self


class Policies(_Model):
    requires_consent: bool = True
    frequency_cap: FrequencyCap | None = FrequencyCap()
    send_window: SendWindow | None = SendWindow()
    holdout_percent: float = Field(0.0, ge=0.0, le=50.0)


class Delivery(_Model):
    rate_per_second: float = Field(100.0, gt=0, description="emails per second, all batches")
    concurrency: int = Field(32, ge=1, le=512, description="requests in flight per batch task")
    batch_size: int = Field(1000, ge=1, le=50_000, description="ledger rows per mapped task")
    max_active_batches: int = Field(2, ge=1, le=32, description="batch tasks running at once")
    recipients_per_request: int = Field(
        1, ge=1, le=1000, description="recipients per SendGrid request (one body, substitutions)"
    )
    asm_group_id: int | None = None
    categories: list[str] = Field(default_factory=list, max_length=10)
    sandbox_mode: bool = False

    @field_validator("categories")
    @classmethod
    def _ascii_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("categories must be unique")
        for category in value:
            if not category.isascii() or not 0 < len(category) <= 255:
                raise ValueError(f"category {category!r} must be 1-255 ASCII characters")
        return value


class Coupon(_Model):
    discount_percent: float = Field(gt=0, le=100)
    valid_days: int = Field(30, ge=1)


class Approval(_Model):
    """A person approves each real run between plan and deliver (Airflow's approval step).

    `approval: required` is the short form; the long form names who may approve (Airflow user
    ids; empty: anyone who may edit the campaign's DAG) and how long the run waits.
    """

    required: bool = True
    approvers: list[str] = Field(default_factory=list, description="Airflow user ids")
    expires_after_hours: float = Field(
        24.0, gt=0, le=24 * 14, description="no answer in this time: the run ends expired"
    )

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if value == "required":
            return {"required": True}
        if isinstance(value, str):
            raise ValueError(f"{value!r}: write 'approval: required', or a mapping")
        return value

    @property
    def expires_after(self) -> timedelta:
        return timedelta(hours=self.expires_after_hours)


class Variant(_Model):
    """One arm of an A/B/n test: its share of the audience and what differs from the spec."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,30}$")
    weight: float = Field(gt=0, le=100, description="percent of the audience (all sum to 100)")
    subject: str | dict[Literal["en", "hy", "ka"], str] | None = Field(
        None, description="subject line (Jinja), or one per locale; default: subject.txt"
    )
    template: str | None = Field(None, description="template folder; default: the spec's")
    coupon_discount_percent: float | None = Field(None, gt=0, le=100)
    fields: dict[str, Any] = Field(
        default_factory=dict, description="template_fields with a fixed value in this variant"
    )


class Tracking(_Model):
    """SendGrid's click tracking (links go through SendGrid, in HTML and text) and open
    tracking (a pixel), set on every message of the campaign."""

    clicks: bool = False
    opens: bool = False


class Experiment(_Model):
    """Test then send the winner: `test_percent` of the audience first, split by weight."""

    test_percent: float = Field(20.0, gt=0, lt=100)
    wait_hours: float = Field(4.0, gt=0, le=24 * 14)
    metric: Literal["unique_opens", "clicks", "conversions"] = "unique_opens"
    significance: float = Field(0.05, gt=0, lt=0.5, description="two-sided test level")
    fallback: str = Field(description="variant sent to the rest when no winner is significant")


class CampaignSpec(_Model):
    id: str = Field(pattern=ID_PATTERN)
    description: str
    owner: str = "marketing"
    tags: list[str] = Field(default_factory=list)
    schedule: Schedule = Schedule()
    segment: str | dict[str, Any] = Field(description="a segment name, or an inline segment")
    template: str = Field(description="template folder; may use {occurrence_key}")
    occurrence_key: str = Field(description="feature that identifies 'the same email'")
    template_fields: list[str] = Field(
        default_factory=list, description="extra features the template reads"
    )
    default_locale: Literal["en", "hy", "ka"] = "en"
    sender: Address
    reply_to: Address | None = None
    policies: Policies = Policies()
    delivery: Delivery = Delivery()
    coupon: Coupon | None = None
    approval: Approval | None = None
    deadline_hours: float | None = Field(
        None, gt=0, description="alert when a run is not finished this long after it was queued"
    )
    queue: str | None = Field(
        None, description="Celery queue of the campaign's tasks; default: the deployment's"
    )
    variants: list[Variant] = Field(default_factory=list, description="A/B/n test arms")
    experiment: Experiment | None = None
    tracking: Tracking | None = Field(None, description="default: the SendGrid account's")
    name: str | None = Field(
        None, max_length=80, description="what people call it, e.g. 'Birthday discount'"
    )
    status: Literal["draft", "live"] = Field(
        "draft", description="a draft never mails customers: dry runs and test sends only"
    )
    source_path: Path | None = Field(None, exclude=True)

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, value: str | None) -> str | None:
        return value if value is None else check_queue(value)

    @field_validator("segment", mode="before")
    @classmethod
    def _segment_shape(cls, value: Any) -> Any:
        if not isinstance(value, str | dict) or not value:
            raise ValueError(
                "give a segment name (e.g. birthday) or {use: <segment>, params: {...}}"
            )
        return value

    @model_validator(mode="after")
    def _schedule_reaches_every_window(self) -> CampaignSpec:
        """A row waiting for its customer's window is only sent by a run inside that window, so
        a cron with longer gaps than the window would never reach some timezones."""
        window, cron = self.policies.send_window, self.schedule.cron
        if window is None or cron is None or self.schedule.after_features:
            return self
        width = datetime.combine(date.min, window.end) - datetime.combine(date.min, window.start)
        gap = longest_gap(cron, self.schedule.timezone)
        if gap > width:
            raise ValueError(
                f"schedule.cron {cron!r} leaves up to {_hours(gap)} between runs, longer than "
                f"the {window.start:%H:%M}-{window.end:%H:%M} send window ({_hours(width)}): "
                "customers in some timezones would never see a run inside their window. "
                "Run at least as often as the window is wide (e.g. '0 * * * *'), set "
                "schedule.after_features, or remove policies.send_window"
            )
        return self

    @model_validator(mode="after")
    def _variants_fit(self) -> CampaignSpec:
        if not self.variants:
            if self.experiment is not None:
                raise ValueError(
                    "field 'experiment': needs variants: add at least two under 'variants'"
                )
            return self
        ids = [variant.id for variant in self.variants]
        if len(self.variants) < 2 or len(set(ids)) != len(ids):
            raise ValueError(f"field 'variants': need at least two distinct ids, got {ids}")
        total = sum(variant.weight for variant in self.variants)
        if abs(total - 100) > 1e-6:
            raise ValueError(
                f"field 'variants': weights sum to {total:g}, not 100: make them percentages "
                f"of the audience, e.g. {', '.join(f'{i}: {100 / len(ids):g}' for i in ids)}"
            )
        for number, variant in enumerate(self.variants):
            unknown = sorted(set(variant.fields) - set(self.template_fields))
            if unknown:
                raise ValueError(
                    f"field 'variants.{number}.fields': unknown template field {unknown[0]!r}: "
                    f"use one of template_fields ({', '.join(self.template_fields) or 'none'}) "
                    "or add it there"
                )
            if variant.coupon_discount_percent is not None and self.coupon is None:
                raise ValueError(
                    f"field 'variants.{number}.coupon_discount_percent': the campaign has no "
                    "coupon; add 'coupon:' to the spec or remove the variant's discount"
                )
        if self.experiment is not None and self.experiment.fallback not in ids:
            raise ValueError(
                f"field 'experiment.fallback': {self.experiment.fallback!r} is not a variant; "
                f"use one of {', '.join(ids)}"
            )
        return self

    @property
    def variant_ids(self) -> list[str]:
        return [variant.id for variant in self.variants]

    def variant(self, variant_id: str | None) -> Variant | None:
        """The variant of that id (None without variants or id)."""
        return next((v for v in self.variants if v.id == variant_id), None)

    def variant_template(self, variant_id: str | None, occurrence_key: str) -> str:
        """The template folder a variant's email uses."""
        variant = self.variant(variant_id)
        folder = variant.template if variant and variant.template else self.template
        return folder.format(occurrence_key=occurrence_key)

    @property
    def needs_approval(self) -> bool:
        return self.approval is not None and self.approval.required

    @property
    def dag_id(self) -> str:
        return f"campaign_{self.id}"

    @property
    def live(self) -> bool:
        """Only a live campaign mails its audience; a draft can be rehearsed, never sent."""
        return self.status == "live"

    @property
    def display_name(self) -> str:
        return self.name or self.id.replace("_", " ").capitalize()

    @property
    def spec_file(self) -> str:
        """The spec's file as people see it: relative to the project when it lives there."""
        if self.source_path is None:
            return f"include/campaigns/{self.id}.yaml"
        path = self.source_path.resolve()
        return str(path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path)

    def template_for(self, occurrence_key: str) -> str:
        return self.template.format(occurrence_key=occurrence_key)


def longest_gap(cron: str, timezone: str) -> timedelta:
    """The longest time between two runs of `cron` over a week, to the hour: at most one
    `get_next` per hour, so it stays cheap while DAG files are parsed."""
    hour = timedelta(hours=1)
    start = datetime(2026, 1, 5, tzinfo=ZoneInfo(timezone))  # a Monday
    idle = longest = timedelta(0)
    moment, runs = start, croniter(cron, start)
    while moment < start + timedelta(days=8):
        runs.set_current(moment - timedelta(seconds=1), force=True)
        upcoming = runs.get_next(datetime)
        if upcoming - moment >= timedelta(days=8):
            return upcoming - moment
        if upcoming < moment + hour:
            longest, idle = max(longest, idle + hour), timedelta(0)
        else:
            idle += hour
        moment += hour
    return max(longest, idle + hour)


def _hours(span: timedelta) -> str:
    return f"{round(span.total_seconds() / 3600, 1):g} h"


def _describe(error: ErrorDetails) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field" + _did_you_mean(error["loc"])
    if not error["loc"]:  # a rule across fields: its message names them
        return message
    return f"field '{'.'.join(str(part) for part in error['loc'])}': {message}"


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    """Suggest the known field a misspelt one was probably meant to be."""
    model: Any = CampaignSpec
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list field: same model
            continue
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, _Model)), None)
        if model is None:
            return ""
    known = [name for name in model.model_fields if name != "source_path"]
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; known fields: {', '.join(known)}"


def load_spec(path: Path, templates_dir: Path | None = None) -> CampaignSpec:
    """The spec in `path`; with `templates_dir`, every variant's template folder must exist."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of fields, got {type(raw).__name__}")
    try:
        spec = CampaignSpec.model_validate({**raw, "source_path": path})
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise SpecError(f"{path}: {problems}") from None
    if spec.id != path.stem:
        raise SpecError(f"{path}: field 'id': {spec.id!r} must match the file name {path.stem!r}")
    if not re.fullmatch(r"[a-z0-9_/]*(\{occurrence_key\}[a-z0-9_/]*)*", spec.template):
        raise SpecError(
            f"{path}: field 'template': {spec.template!r} is not a template folder "
            "(lower-case letters, digits, _ and /, optionally {occurrence_key})"
        )
    if templates_dir is not None:
        _variant_templates_exist(path, spec, templates_dir)
    return spec


def _variant_templates_exist(path: Path, spec: CampaignSpec, templates_dir: Path) -> None:
    for number, variant in enumerate(spec.variants):
        folder = variant.template
        if folder is None:
            continue
        if not re.fullmatch(r"[a-z0-9_/]*(\{occurrence_key\}[a-z0-9_/]*)*", folder):
            raise SpecError(
                f"{path}: field 'variants.{number}.template': {folder!r} is not a template "
                "folder (lower-case letters, digits, _ and /, optionally {occurrence_key})"
            )
        pattern = folder.replace("{occurrence_key}", "*")
        if not any(found.is_dir() for found in templates_dir.glob(pattern)):
            raise SpecError(
                f"{path}: field 'variants.{number}.template': variant {variant.id!r} has no "
                f"template: {templates_dir / folder} does not exist; create the folder (one "
                "per locale with subject.txt, body.html, body.txt) or remove 'template' to "
                "use the spec's"
            )


@dataclass(frozen=True)
class Campaigns:
    """A folder of specs: the valid ones by id, and each invalid file's error by its path."""

    specs: dict[str, CampaignSpec]
    errors: dict[Path, str]

    @property
    def ids(self) -> list[str]:
        """Every campaign a file stands for, valid or not (a file's name is its campaign's id)."""
        return sorted({*self.specs, *(path.stem for path in self.errors)})

    def spec(self, campaign_id: str) -> CampaignSpec | None:
        """The campaign's spec, or None if no file stands for it; raises `SpecError` with its
        file's error if that file is invalid."""
        for path, error in self.errors.items():
            if path.stem == campaign_id:
                raise SpecError(error)
        return self.specs.get(campaign_id)


def load_campaigns(directory: Path, templates_dir: Path | None = None) -> Campaigns:
    """Every `*.yaml` spec in `directory`: an invalid file never hides the valid ones. With
    `templates_dir`, a variant's template folder that does not exist makes its spec invalid."""
    specs: dict[str, CampaignSpec] = {}
    errors: dict[Path, str] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            spec = load_spec(path, templates_dir)
        except SpecError as exc:
            errors[path] = str(exc)
        else:
            specs[spec.id] = spec
    return Campaigns(specs, errors)
