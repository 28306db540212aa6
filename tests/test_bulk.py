"""Bulk requests (`delivery.recipients_per_request`): one body, many recipients, substitutions.

The equivalence test sends every shipped campaign's template x locale to a hostile audience
through real bulk requests to the sink, which applies the substitutions like SendGrid, and
compares each received email byte for byte with the email rendered for that row alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from lifecycle.core import render
from lifecycle.core.campaigns import CampaignSpec, load_campaigns
from lifecycle.core.config import PROJECT_ROOT, Settings, load_settings
from lifecycle.core.samples import SAMPLE_DATA, sample_context
from lifecycle.core.substitutions import (
    IN_TIMEZONE,
    RECIPIENT_MAPS,
    RECIPIENT_VALUES,
    NotExpressible,
    recipient_paths,
)
from lifecycle.core.templates import TemplateProblem
from lifecycle.delivery import BulkMessage, Message, Personalization
from lifecycle.delivery.sendgrid import BulkLimitError, SendGridTransport, check_bulk
from lifecycle.devtools.sink.thread import SinkHandle, run_sink_in_thread
from lifecycle.run import bulk
from lifecycle.run.compose import Composer, envelope_for
from lifecycle.run.preflight import preflight
from lifecycle.run.rows import EmailRow
from lifecycle.store import warehouse
from lifecycle.store.coupons import CouponInfo
from lifecycle.store.ledger import Outcome
from lifecycle.store.states import FailReason, LedgerStatus

KEY = "SG.bulk-test-key"
AS_OF = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
SPECS = load_campaigns(PROJECT_ROOT / "include" / "campaigns").specs

HOSTILE_NAMES: list[tuple[str | None, str | None]] = [
    ("Anna", "Walker"),
    ("Anna", "Walker"),  # the same values twice: one group, distinct rows
    ("<b>Bold</b> & <script>alert('x')</script>", 'O\'Brien "Jr" <x@y>'),
    ("\"quoted\" 'single' `back`", "&amp; &lt;already&gt;"),
    ("שלום עליכם", "مرحبا"),  # right to left
    ("\u202eevil\u202c", "\u200fmark"),  # bidi controls
    ("😀 👩‍👩‍👧 🇦🇲", "🎁"),
    ("Ани Петросян-Ბერიძე Անի", "ნინო"),
    ("{{ first_name }} {% if x %}", "[[ brand.name ]]"),  # template syntax is just text
    ("-lc00000000.0- %name% -first_name-", "tag-like"),
    ("Line\nbreak\tand\r\nCRLF", "  padded  "),
    ("", ""),  # the fallback name
    (None, None),
    ("Ü" * 1200, "long"),  # long but fits SendGrid's 10,000 bytes of substitutions
    ("X" * 12_000, "too long for a substitution"),  # sent alone, rendered directly
]
LOCALES = ["en", "hy", "ka", "hy-AM", None, "fr"]
TIMEZONES = ["Asia/Yerevan", "America/New_York"]
HOSTILE_DATA = {
    "order_id": '1002<34>&"',
    "loyalty_tier": "<i>diamond</i>",
    "loyalty_points": 98765,
    "order_amount": "1234.5",
}


def settings_for(tmp_path: Path, sink_url: str) -> Settings:
    return load_settings(
        home=tmp_path,
        transport="sendgrid",
        sendgrid_api_key=KEY,
        sendgrid_host=sink_url,
        unsubscribe_secret="bulk-test-unsubscribe-secret",
    )


def audience(spec: CampaignSpec, occurrence_key: str) -> list[tuple[EmailRow, CouponInfo | None]]:
    """Every hostile name in every locale and two timezones, with varied data and coupons."""
    rows = []
    combos = itertools.product(HOSTILE_NAMES, LOCALES, TIMEZONES)
    for send_id, ((first, last), locale, timezone) in enumerate(combos, start=1):
        data = {name: SAMPLE_DATA.get(name, f"value {send_id}") for name in spec.template_fields}
        if send_id % 4 == 0:
            data = {**data, **{k: v for k, v in HOSTILE_DATA.items() if k in data}}
        if "loyalty_tier" in data and send_id % 3 == 0:
            data["loyalty_tier"] = "platinum"
        email = f"c{send_id}@example.am" if send_id % 11 else "Shared@Example.am"  # repeats
        row = EmailRow(
            send_id=send_id,
            customer_id=1000 + send_id,
            occurrence_key=occurrence_key,
            template=spec.template_for(occurrence_key),
            email=email,
            locale=locale,
            timezone=timezone,
            context={"first_name": first, "last_name": last, "data": data},
        )
        coupon = None
        # reengagement's templates handle a missing coupon: some of its rows have none
        if spec.coupon is not None and (send_id % 5 or spec.id != "reengagement"):
            code = f"C<{send_id}>&\"'" if send_id % 2 else f"CODE{send_id}"
            expires = AS_OF + timedelta(days=spec.coupon.valid_days, hours=send_id)
            coupon = CouponInfo(code, spec.coupon.discount_percent, AS_OF, expires)
        rows.append((row, coupon))
    return rows


def send(sink: SinkHandle, spec: CampaignSpec, requests: list[Message | BulkMessage]) -> None:
    async def run() -> list[Any]:
        transport = SendGridTransport(KEY, sink.url, envelope_for(spec), concurrency=8)
        try:
            return await asyncio.gather(
                *(
                    transport.send_bulk(r) if isinstance(r, BulkMessage) else transport.send(r)
                    for r in requests
                )
            )
        finally:
            await transport.close()

    answers = asyncio.run(run())
    outcomes = [o for a in answers for o in (a if isinstance(a, list) else [a])]
    assert {o.status for o in outcomes} == {LedgerStatus.SENT}, outcomes[:3]


CASES = [
    (spec_id, key)
    for spec_id, spec in sorted(SPECS.items())
    for key in render.get_renderer(load_settings()).occurrence_keys(spec)
]


@pytest.mark.parametrize(("spec_id", "occurrence_key"), CASES)
def test_every_recipient_sees_exactly_the_email_rendered_for_them_alone(
    spec_id: str, occurrence_key: str, tmp_path: Path
) -> None:
    spec = SPECS[spec_id]
    with run_sink_in_thread(api_keys=[KEY]) as sink:
        composer = Composer(spec, settings_for(tmp_path, sink.url), AS_OF)
        rows = audience(spec, occurrence_key)
        alone = {row.send_id: composer.email(row, coupon).message for row, coupon in rows}
        recipients = [composer.recipient(row, coupon) for row, coupon in rows]
        shared, singles = composer.grouper.requests(recipients, 1000)
        send(sink, spec, [*shared, *(composer.alone(r) for r in singles)])
        received = {int(m["custom_args"]["send_id"]): m for m in sink.state.snapshot()}

    assert sorted(received) == sorted(alone)  # everyone exactly once
    for send_id, expected in alone.items():
        got = received[send_id]
        assert got["to"] == [expected.to_email.lower()]
        assert got["subject"] == expected.subject, send_id
        assert got["content"]["text/plain"] == expected.text, send_id
        assert got["content"]["text/html"] == expected.html, send_id
        assert got["headers"] == expected.headers
        assert got["custom_args"] == expected.custom_args
    if spec_id in ("birthday", "onboarding", "reengagement"):  # nothing forces them apart
        assert len(shared) < len(rows) / 5
        assert max(len(m.personalizations) for m in shared) > 10
    too_long = {r.row.send_id for r in singles if r.values["first_name"].startswith("XXX")}
    assert too_long == {
        row.send_id for row, _ in rows if (row.context["first_name"] or "")[:1] == "X"
    }


def test_preflight_names_the_values_substitutions_cannot_express() -> None:
    renderer = render.get_renderer(load_settings())
    found = {spec_id: bulk.findings(renderer, spec) for spec_id, spec in SPECS.items()}
    assert found["birthday"] == found["onboarding"] == found["reengagement"] == []
    loyalty = " ".join(found["loyalty"])
    assert "data.loyalty_tier" in loyalty and "data.loyalty_points" in loyalty  # if, fmt.number
    feedback = " ".join(found["feedback"])
    assert "data.order_id" in feedback and "data.order_placed_at" in feedback  # urlencode, fmt


def personalization(i: int, email: str | None = None, **changes: Any) -> Personalization:
    fields: dict[str, Any] = {
        "send_id": i,
        "to_email": email or f"p{i}@example.am",
        "to_name": None,
        "subject": "Hi",
        "headers": {},
        "custom_args": {"send_id": str(i)},
        "substitutions": {"-n-": f"name {i}"},
        **changes,
    }
    return Personalization(**fields)


@pytest.mark.parametrize(
    ("items", "error"),
    [
        ([personalization(i) for i in range(1001)], "1001 personalizations"),
        ([personalization(1, "a@x.am"), personalization(2, "A@x.am")], "already in this request"),
        ([personalization(1, substitutions={"-n-": "é" * 5_000})], "10,000"),
    ],
)
def test_a_bulk_request_over_sendgrids_limits_is_refused_before_sending(
    items: list[Personalization], error: str
) -> None:
    message = BulkMessage("text -n-", "<p>-n-</p>", tuple(items))
    with pytest.raises(BulkLimitError, match=error):
        check_bulk(message)
    with run_sink_in_thread(api_keys=[KEY]) as sink:
        transport = SendGridTransport(KEY, sink.url, envelope_for(SPECS["birthday"]))

        async def run() -> list[Outcome]:
            try:
                return await transport.send_bulk(message)
            finally:
                await transport.close()

        outcomes = asyncio.run(run())
        assert sink.state.stats["requests"] == 0
    assert {(o.status, o.retryable, o.reason) for o in outcomes} == {
        (LedgerStatus.FAILED, False, FailReason.REJECTED)
    }
    assert error.split()[0] in (outcomes[0].error or "")


def test_the_packing_keeps_each_request_within_the_limits(tmp_path: Path) -> None:
    spec = SPECS["reengagement"]
    composer = Composer(spec, settings_for(tmp_path, "http://127.0.0.1:9"), AS_OF)
    context = {"first_name": "A", "data": {}}
    rows = [
        EmailRow(i, i, "2026-08-20", "reengagement", f"c{i % 700}@x.am", "en", "UTC", context)
        for i in range(2500)
    ]
    recipients = [composer.recipient(row, None) for row in rows]
    shared, singles = composer.grouper.requests(recipients, 1000)
    assert singles == []
    for message in shared:
        check_bulk(message)  # at most 1,000, no address twice
    assert sorted(i for m in shared for i in m.send_ids) == list(range(2500))
    assert [len(m.personalizations) for m in shared] == [700, 700, 700, 400]


def probe(
    tmp_path: Path, html: str, text: str = "{{ first_name }} {{ coupon.code }}"
) -> tuple[render.Renderer, dict[str, Any]]:
    """A renderer with the shipped layouts and a template `probe` (en) of this HTML and text;
    sample values for it."""
    templates = tmp_path / "templates"
    (templates / "probe" / "en").mkdir(parents=True)
    (templates / "_layouts").symlink_to(load_settings().templates_dir / "_layouts")
    folder = templates / "probe" / "en"
    (folder / "subject.txt").write_text("Hello", encoding="utf-8")
    (folder / "body.txt").write_text(text, encoding="utf-8")
    (folder / "body.html").write_text(html, encoding="utf-8")
    renderer = render.Renderer(load_settings(templates_dir=templates))
    spec = SPECS["birthday"].model_copy(update={"template_fields": ["order_id", "order_placed_at"]})
    return renderer, renderer.values("probe", "en", "en", sample_context(spec, "2026", "en"))[1]


@pytest.mark.parametrize(
    ("html", "path"),
    [
        ('{% if first_name == "Anna" %}hi{% endif %}', "first_name"),
        ("{% if customer.last_name %}hi{% endif %}", "customer.last_name"),
        ("{% for c in first_name %}{{ c }}{% endfor %}", "first_name"),
        ("{{ first_name|upper }}", "first_name"),
        ("{{ first_name|length }}", "first_name"),
        ("{{ first_name[0] }}", "first_name"),
        ('{{ first_name ~ "!" }}', "first_name"),
        ('{{ "%s!"|format(first_name) }}', "first_name"),
        ("{{ first_name|safe }}", "first_name"),
        ("{{ data.order_id|urlencode }}", "data.order_id"),
        ("{{ fmt.date(data.order_placed_at) }}", "customer.timezone"),  # then the date
        ("{{ local_date }}", "customer.timezone"),
        ("{{ data.order_id > 5 }}", "data.order_id"),
        ("{{ data.order_id + 1 }}", "data.order_id"),
        ("{{ data.order_id.real }}", "data.order_id"),
        ('{{ {"BDAY7K3M9Q": 1}[coupon.code] }}', "coupon.code"),
    ],
)
def test_a_value_used_other_than_by_output_is_named_not_substituted(
    html: str, path: str, tmp_path: Path
) -> None:
    renderer, values = probe(tmp_path, f"<p>{{{{ first_name }}}} {html}</p>")
    locale, paths = "en", list(recipient_paths(values))
    with pytest.raises(NotExpressible) as caught:
        renderer.render_shared("probe", locale, values, paths)
    assert caught.value.path == path
    # without the values named (fmt.date names the timezone, then the date), the body
    # renders; `{{ x }}` alone is fine
    named = {path}
    while True:
        try:
            body = renderer.render_shared("probe", locale, values, sorted(set(paths) - named))
            break
        except NotExpressible as exc:
            named.add(exc.path)
    used = {used_path for used_path, _ in body.tags.by_use}
    assert not named & used and {"first_name", "coupon.code"} - named <= used


def test_the_sink_applies_substitutions_once_and_refuses_what_sendgrid_refuses() -> None:
    def body(substitutions: dict[str, Any]) -> dict[str, Any]:
        return {
            "personalizations": [
                {"to": [{"email": "a@x.am"}], "subject": "Hi -n-", "substitutions": substitutions}
            ],
            "from": {"email": "shop@x.am"},
            "content": [{"type": "text/plain", "value": "-n- and -m-"}],
        }

    with run_sink_in_thread(api_keys=[KEY]) as sink:
        post = functools.partial(
            httpx.post, f"{sink.url}/v3/mail/send", headers={"Authorization": f"Bearer {KEY}"}
        )
        assert post(json=body({"-n-": "<-m->", "-m-": "M"})).status_code == 202
        (email,) = sink.state.snapshot()
        assert email["subject"] == "Hi <-m->"
        assert email["content"]["text/plain"] == "<-m-> and M"  # a value is not scanned again
        answer = post(json=body({"-n-": 5}))
        assert answer.status_code == 400 and "must be strings" in answer.text
        answer = post(json=body({"-n-": "é" * 4_999}))  # 3 + 9,998 bytes
        assert answer.status_code == 400 and "10000 bytes" in answer.text
        assert post(json=body({"-n-": "é" * 4_998})).status_code == 202


def test_preflight_says_which_values_keep_recipients_apart(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(
        home=tmp_path, warehouse_url=sqlite_url, transport="outbox", unsubscribe_secret="s"
    )
    engine = warehouse.make_engine(sqlite_url)
    loyalty = SPECS["loyalty"]
    bulk_loyalty = loyalty.model_copy(
        update={"delivery": loyalty.delivery.model_copy(update={"recipients_per_request": 100})}
    )
    caplog.set_level(logging.WARNING, logger="lifecycle.run.preflight")
    preflight(engine, loyalty, settings, as_of=AS_OF)
    assert caplog.messages == []
    preflight(engine, bulk_loyalty, settings, as_of=AS_OF)
    assert any("data.loyalty_points" in m and "grouped by" in m for m in caplog.messages)
    engine.dispose()


@pytest.mark.parametrize(
    ("last_name", "shared"),
    [("Walker", True), ("Walker ", False), (" Walker", False), ("", False), ("\u2003", False)],
)
def test_a_value_at_the_edge_of_the_text_whose_whitespace_a_render_strips_goes_alone(
    last_name: str, shared: bool, tmp_path: Path
) -> None:
    """The text part is stripped after rendering: a value at either end loses its whitespace
    alone but not as a substitution, so such a recipient is not given one."""
    text = "{{ customer.last_name }} - {{ first_name }} - {{ customer.last_name }}"
    renderer, values = probe(tmp_path, "<p>{{ first_name }}</p>", text)
    body = renderer.render_shared("probe", "en", values, list(recipient_paths(values)))
    recipient = {**values, "customer": {**values["customer"], "last_name": last_name}}
    assert (body.substitutions(recipient) is not None) is shared
    if shared:
        alone = renderer.render_values("probe", "en", recipient).text
        found = body.substitutions(recipient) or {}
        assert re.sub("|".join(map(re.escape, found)), lambda m: found[m[0]], body.text) == alone


def test_every_value_of_the_render_context_is_substituted_or_part_of_the_group_key(
    tmp_path: Path,
) -> None:
    """A value added to the context must be classified: a recipient's own (a substitution, or
    rendered directly when it cannot be one) or shared by the group (`bulk.group_key`).
    Otherwise a group's body would silently carry its first recipient's value."""
    spec = SPECS["birthday"]
    composer = Composer(spec, settings_for(tmp_path, "http://127.0.0.1:9"), AS_OF)
    row, coupon = audience(spec, "2026")[0]
    context, _, _ = composer.context(row, coupon)
    renderer = composer.renderer
    locale, values = renderer.values(row.template, row.locale, spec.default_locale, context)
    # brand strings and layouts are the locale's, the same for the whole group
    own = {name: value for name, value in values.items() if name not in renderer.static[locale]}
    nested = {
        name: value
        for name, value in own.items()
        if isinstance(value, dict) and name not in RECIPIENT_MAPS
    }
    paths = {f"{name}.{key}" for name, value in nested.items() for key in value}
    paths |= set(own) - set(nested)
    # row.locale and row.variant; one campaign per composer
    in_group_key = {"customer.locale", "campaign.id", "variant", "utm_query"}
    recipients = set(RECIPIENT_VALUES) | set(RECIPIENT_MAPS) | set(IN_TIMEZONE)
    assert paths - in_group_key == recipients
    assert set(IN_TIMEZONE) == {"fmt", "local_date"}  # stand for customer.timezone


def test_a_row_missing_a_field_the_others_have_is_rendered_alone_and_fails_alone(
    tmp_path: Path,
) -> None:
    spec = SPECS["loyalty"]
    composer = Composer(spec, settings_for(tmp_path, "http://127.0.0.1:9"), AS_OF)
    full = {"loyalty_tier": "gold", "loyalty_points": 1250}
    rows = [
        EmailRow(i, i, "gold", "loyalty", f"c{i}@x.am", "en", "UTC", {"data": full})
        for i in range(6)
    ] + [EmailRow(9, 9, "gold", "loyalty", "c9@x.am", "en", "UTC", {"data": {}})]
    recipients = [composer.recipient(row, None) for row in rows[:-1]]
    with pytest.raises(TemplateProblem):  # its subject already needs the tier
        composer.recipient(rows[-1], None)
    broken = dataclasses.replace(recipients[0], row=rows[-1], values={**recipients[0].values})
    broken.values["data"] = {}
    shared, singles = composer.grouper.requests([*recipients, broken], 1000)
    assert [r.row.send_id for r in singles] == [9]
    assert sorted(i for m in shared for i in m.send_ids) == list(range(6))
    with pytest.raises(TemplateProblem):
        composer.alone(singles[0])
