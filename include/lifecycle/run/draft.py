"""The draft gate: a campaign whose spec is not `status: live` never mails its audience.

A draft can be planned as a dry run, previewed and test-sent; a real run of it (scheduled,
triggered, or `lifecycle run` without `--dry-run`) stops here, before planning, with one line
saying how to make it live.
"""

from __future__ import annotations

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.run.preflight import PreflightError


class DraftCampaign(PreflightError):
    """A real run of a draft campaign; the message says how to make it live."""


def refusal(spec: CampaignSpec) -> str:
    """The one line a real run of a draft ends with."""
    return (
        f"campaign {spec.id} is a draft, so nothing was planned or sent: to let it mail "
        f"customers, set `status: live` in {spec.spec_file} (drafts take dry runs and test sends)"
    )


def refuse_draft(spec: CampaignSpec, *, dry_run: bool) -> None:
    """Raise `DraftCampaign` for a real (not dry) run of a draft."""
    if not dry_run and not spec.live:
        raise DraftCampaign(refusal(spec))
