"""Bulk requests: recipients that share a body go to SendGrid together, their own values as
substitutions (`core.substitutions`); `delivery.recipients_per_request` in the spec.

Recipients are grouped by `group_key` (what a shared body depends on besides their own values).
Each group's HTML and text are rendered once and the group is packed into requests of at most
`recipients_per_request` recipients, within SendGrid's limits (`delivery.sendgrid.check_bulk`).

A value the templates use other than by outputting it (a condition or loop over it, a filter,
a function call) cannot be a substitution: it joins the group key of that template x locale
(logged once, and reported by preflight), so recipients are grouped by its value, and where
every recipient has their own value that is one recipient per request. A recipient whose
values cannot travel as substitutions (over 10,000 bytes, whitespace a render would strip) is
sent alone, rendered directly, as with `recipients_per_request: 1`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from lifecycle.core import render
from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.samples import sample_context
from lifecycle.core.substitutions import NotExpressible, SharedBody, leaf, recipient_paths
from lifecycle.delivery import BulkMessage, Personalization
from lifecycle.delivery.sendgrid import (
    MAX_PERSONALIZATIONS,
    MAX_SUBSTITUTIONS_BYTES,
    substitutions_size,
)
from lifecycle.run.rows import EmailRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipient:
    """A row ready for a request: the values its templates see, and what is only theirs."""

    row: EmailRow
    has_coupon: bool
    locale: str  # the template locale used
    values: dict[str, Any]  # what the templates see (`Renderer.values`)
    personal: Personalization  # without substitutions yet


def group_key(recipient: Recipient) -> tuple[Hashable, ...]:
    """What a shared body depends on besides the recipient values in `recipient_paths`.
    A new per-recipient choice of body (e.g. a variant) is one more line here."""
    row = recipient.row
    return (
        row.template,
        row.locale,  # the template locale, `customer.locale`
        recipient.has_coupon,
        row.variant,  # its subject, fields and UTM content (`variant`, `utm_query`)
    )


def _value_key(values: dict[str, Any], path: str) -> Hashable:
    try:
        return json.dumps(leaf(values, path), sort_keys=True, default=str)
    except (KeyError, TypeError):  # a row planned without a field the others have
        return None


class Grouper:
    """Shared bodies for one campaign; learns, per template x locale, the values that must be
    rendered directly (`direct`)."""

    def __init__(self, renderer: render.Renderer, *, quiet: bool = False):
        self.renderer, self.quiet = renderer, quiet
        self.direct: dict[tuple[str, str], set[str]] = {}

    def _key(self, recipient: Recipient) -> tuple[Hashable, ...]:
        direct = self.direct.get((recipient.row.template, recipient.locale), ())
        values = tuple(_value_key(recipient.values, path) for path in sorted(direct))
        return (*group_key(recipient), values)

    def _split(self, members: list[Recipient]) -> list[list[Recipient]]:
        groups: dict[tuple[Hashable, ...], list[Recipient]] = {}
        for recipient in members:
            groups.setdefault(self._key(recipient), []).append(recipient)
        return list(groups.values())

    def body(self, template: str, locale: str, values: dict[str, Any]) -> SharedBody:
        """The shared body, or `NotExpressible` after adding its value to `direct`."""
        direct = self.direct.setdefault((template, locale), set())
        paths = [path for path in recipient_paths(values) if path not in direct]
        try:
            return self.renderer.render_shared(template, locale, values, paths)
        except NotExpressible as exc:
            direct.add(exc.path)
            if self.quiet:
                raise
            log.warning(
                "%s/%s: %s; recipients are grouped by its value (one request each where "
                "it is unique)",
                template,
                locale,
                exc,
            )
            raise

    def requests(
        self, recipients: list[Recipient], per_request: int
    ) -> tuple[list[BulkMessage], list[Recipient]]:
        """Bulk requests for `recipients`, and those to send alone, rendered directly."""
        out: list[BulkMessage] = []
        singles: list[Recipient] = []
        queue = self._split(recipients)
        while queue:
            members = queue.pop()
            parts = self._split(members)  # `direct` may have grown since they were grouped
            if len(parts) > 1:
                queue.extend(parts)
                continue
            if len(members) == 1:
                singles.extend(members)
                continue
            first = members[0]
            try:
                body = self.body(first.row.template, first.locale, first.values)
            except NotExpressible:
                queue.append(members)
                continue
            except Exception as exc:  # rendered alone, each recipient's own error is recorded
                template = first.row.template
                log.warning("%s: no shared body (%s); one recipient per request", template, exc)
                singles.extend(members)
                continue
            out += _pack(body, members, min(per_request, MAX_PERSONALIZATIONS), singles)
        return out, singles


def _pack(
    body: SharedBody, members: list[Recipient], size: int, singles: list[Recipient]
) -> list[BulkMessage]:
    """`members` in requests of at most `size`, no address twice in one; those whose values
    cannot be substituted go to `singles`."""
    packs: list[tuple[list[Personalization], set[str]]] = []
    first_open = 0
    for recipient in members:
        try:
            substitutions = body.substitutions(recipient.values)
        except (KeyError, TypeError):  # a row planned without a field the others have
            substitutions = None
        personal = recipient.personal
        if (
            substitutions is None
            or substitutions_size(substitutions) > MAX_SUBSTITUTIONS_BYTES
            or body.tags.prefix in personal.subject  # SendGrid substitutes subjects too
        ):
            singles.append(recipient)
            continue
        email = personal.to_email.lower()
        index = first_open
        while index < len(packs) and (len(packs[index][0]) >= size or email in packs[index][1]):
            index += 1
        if index == len(packs):
            packs.append(([], set()))
        items, emails = packs[index]
        items.append(dataclasses.replace(personal, substitutions=substitutions))
        emails.add(email)
        while first_open < len(packs) and len(packs[first_open][0]) >= size:
            first_open += 1
    return [BulkMessage(body.text, body.html, tuple(items)) for items, _ in packs]


def findings(renderer: render.Renderer, spec: CampaignSpec) -> list[str]:
    """What preflight says about bulk mode: per template x locale, the values rendered
    directly (recipients grouped by them) instead of substituted, from the sample data."""
    grouper = Grouper(renderer, quiet=True)
    found: list[str] = []
    for key in renderer.occurrence_keys(spec):
        template = spec.template_for(key)
        for locale in sorted(renderer.available.get(template, ())):
            context = sample_context(spec, key, locale)
            locale_used, values = renderer.values(template, locale, spec.default_locale, context)
            for _ in range(len(list(recipient_paths(values))) + 1):
                try:
                    grouper.body(template, locale_used, values)
                    break
                except NotExpressible:
                    continue
                except Exception as exc:
                    found.append(
                        f"{template}/{locale_used}: no shared body ({exc}); "
                        "one recipient per request"
                    )
                    break
            direct = grouper.direct.get((template, locale_used))
            if direct:
                found.append(
                    f"{template}/{locale_used}: {', '.join(sorted(direct))} cannot be "
                    "substituted; recipients are grouped by these values (one per request "
                    "where they are unique)"
                )
    return found
