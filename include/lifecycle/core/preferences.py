"""The preference centre's topics (`include/preferences.yaml`): one SendGrid unsubscribe group
each, with a label per locale. Which topics a customer receives is stored as suppressions:
scope `group:<id>` for one topic, `global` for every email."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Topic(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    group_id: int = Field(ge=1, le=2**31 - 1)
    label: dict[str, str]

    @property
    def scope(self) -> str:
        return f"group:{self.group_id}"

    def label_in(self, locale: str) -> str:
        return self.label.get(locale) or self.label.get("en") or self.id


class Topics(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    topics: list[Topic]

    def by_group(self, group_id: int | None) -> Topic | None:
        return next((t for t in self.topics if t.group_id == group_id), None)


def load_topics(path: Path) -> Topics:
    return Topics.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
