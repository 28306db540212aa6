"""A dry run's rehearsal of delivery: every email a real run would send is rendered (with a
sample coupon, so none is issued); nothing is written to the ledger and nothing is sent."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.config import Settings
from lifecycle.run.compose import Composer, sample_coupon
from lifecycle.run.rows import from_planned
from lifecycle.store.states import LedgerStatus, RunStatus


class DryRun:
    EXAMPLES = 5  # render errors quoted in the counts

    def __init__(self, spec: CampaignSpec, settings: Settings, as_of: datetime) -> None:
        self.composer = Composer(spec, settings, as_of)
        self.coupons = {v: sample_coupon(spec, as_of, v) for v in [None, *spec.variant_ids]}
        self.planned = 0
        self.skipped: Counter[str] = Counter()
        self.render_errors = 0
        self.examples: list[str] = []

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Count and render the ledger rows `plan` would insert."""
        for index, row in enumerate(rows):
            if row["status"] == LedgerStatus.SKIPPED:
                self.skipped[row["reason"]] += 1
                continue
            self.planned += 1
            try:
                coupon = self.coupons[row.get("variant")]
                self.composer.email(from_planned(row, send_id=-(index + 1)), coupon)
            except Exception as exc:  # reported like a real run's render_error, never raised
                self.render_errors += 1
                if len(self.examples) < self.EXAMPLES:
                    self.examples.append(
                        f"customer {row['customer_id']}: {type(exc).__name__}: {exc}"[:500]
                    )

    @property
    def status(self) -> RunStatus:
        """A dry run fails when any email would not render."""
        return RunStatus.FAILED if self.render_errors else RunStatus.SUCCESS

    def counts(self) -> dict[str, Any]:
        """What the run row stores, and `lifecycle run --dry-run` prints."""
        return {
            "planned": self.planned,
            "skipped": dict(self.skipped),
            "dry_run": True,
            "rendered": self.planned - self.render_errors,
            "render_errors": self.render_errors,
            "render_error_examples": self.examples,
        }
