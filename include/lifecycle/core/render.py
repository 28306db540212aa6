"""Email rendering: localized Jinja templates, compiled once per process, CSS inlined once.

Templates live in `templates/<template>/<locale>/{subject.txt, body.html, body.txt}` and extend
the shared layouts in `templates/_layouts/`. The brand, its layout strings per locale and the
first-name fallback come from `templates/_layouts/brand.yaml`.

CSS from `templates/_layouts/email.css` is inlined into each HTML template's *source* when the
template is loaded (Jinja tags are shielded from the HTML parser meanwhile), so every email is
just a Jinja render: no HTML parsing per email.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import cache, lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import css_inline
import yaml
from babel.dates import format_date
from babel.numbers import format_currency, format_decimal, format_percent
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    select_autoescape,
)
from jinja2.defaults import DEFAULT_NAMESPACE

from lifecycle.core.campaigns import LOCALES, CampaignSpec
from lifecycle.core.config import Settings

LAYOUTS = "_layouts"
PARTS = ("subject.txt", "body.html", "body.txt")
FALLBACK_LOCALE = "en"
LOAD_TIME_NAMES = ("brand", "t", "partials", "locale")  # what `[[ ... ]]` can name

_JINJA_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_PLACEHOLDER = re.compile(r"@@J(\d+)@@|<!--J(\d+)-->")
_STATIC = re.compile(r"\[\[\s*([A-Za-z_][\w.]*)\s*\]\]")


class TemplateProblem(ValueError):
    """A template that cannot render: names the file, the line and the reason."""

    def __init__(self, file: str, line: int | None, reason: str):
        self.file, self.line, self.reason = file, line, reason
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return type(self), (self.file, self.line, self.reason)  # picklable across processes


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str
    locale_used: str


@dataclass(frozen=True)
class _Inlined:
    source: str
    lines: list[tuple[int, int]]  # (line in the inlined source, line in the file) per Jinja tag


def inline_css(source: str, css: str, filename: str) -> _Inlined:
    """`source` with `css` inlined into its elements' style attributes, Jinja tags intact.

    Expressions become text placeholders and statements HTML comments while css-inline parses
    the HTML, then they are put back. A tag the HTML parser moved or mangled (inside a tag's
    attribute list, or a statement inside an attribute value) is reported, not silently lost.
    """
    tags: list[tuple[str, int]] = []

    def shield(match: re.Match[str]) -> str:
        tags.append((match.group(0), source.count("\n", 0, match.start()) + 1))
        number = len(tags) - 1
        return f"@@J{number}@@" if match.group(0).startswith("{{") else f"<!--J{number}-->"

    shielded = _JINJA_TAG.sub(shield, source)
    if shielded.lstrip()[:9].lower() == "<!doctype":
        inlined = css_inline.inline(shielded, extra_css=css, keep_at_rules=True)
    else:
        inlined = css_inline.inline_fragment(shielded, css)

    parts: list[str] = []
    lines: list[tuple[int, int]] = []
    restored: set[int] = set()
    line, position = 1, 0
    for match in _PLACEHOLDER.finditer(inlined):
        number = int(match.group(1) or match.group(2))
        text = inlined[position : match.start()]
        line += text.count("\n")
        tag, original_line = tags[number]
        parts += [text, tag]
        lines.append((line, original_line))
        line += tag.count("\n")
        restored.add(number)
        position = match.end()
    parts.append(inlined[position:])
    for number, (tag, original_line) in enumerate(tags):
        if number not in restored:
            reason = f"Jinja tag {tag!r} sits where HTML cannot keep it (e.g. inside a tag)"
            raise TemplateProblem(filename, original_line, reason)
    return _Inlined("".join(parts), lines)


class _Loader(FileSystemLoader):
    """Loads templates from disk and prepares each source once, for one locale:

    1. `[[ brand.name ]]`, `[[ t.unsubscribe ]]`, `[[ locale ]]`... are replaced by the
       values from brand.yaml for the template's locale (the text goes in as template
       source, so a brand.yaml string may itself hold `{{ ... }}` evaluated per email);
       `[[ partials.coupon ]]` inserts `_layouts/partials/coupon.html` (on one line);
    2. `.html` sources get the email CSS inlined.

    Layouts are shared by all locales: `_layouts/hy/base.html` is `_layouts/base.html` prepared
    for hy (see `_Environment.join_path`).
    """

    def __init__(self, root: Path, css: str, static: dict[str, dict[str, Any]]):
        super().__init__(str(root))
        self.css, self.static = css, static
        self.line_maps: dict[str, list[tuple[int, int]]] = {}

    def get_source(self, environment: Environment, template: str):  # type: ignore[no-untyped-def]
        folder, locale, part = template.rsplit("/", 2)
        path = f"{LAYOUTS}/{part}" if folder == LAYOUTS else template
        source, filename, uptodate = super().get_source(environment, path)
        source = self._substitute(source, filename, locale)
        if part.endswith(".html"):
            environment.parse(source, template, filename)  # syntax errors with the file's lines
            inlined = inline_css(source, self.css, filename)
            self.line_maps[filename] = inlined.lines
            source = inlined.source
        return source, filename, uptodate

    def _substitute(self, source: str, filename: str, locale: str) -> str:
        values = self.static.get(locale)
        if values is None:
            raise TemplateProblem(filename, None, f"brand.yaml has no strings for {locale!r}")

        def value(match: re.Match[str]) -> str:
            found: Any = {name: values[name] for name in LOAD_TIME_NAMES}
            for key in match.group(1).split("."):
                if not isinstance(found, dict) or key not in found:
                    line = source.count("\n", 0, match.start()) + 1
                    raise TemplateProblem(filename, line, f"unknown {match.group(0)} ({locale})")
                found = found[key]
            if match.group(1).startswith("partials."):
                # on one line, so that the including file keeps its line numbers
                return self._substitute(str(found), filename, locale).replace("\n", " ")
            return str(found)

        return _STATIC.sub(value, source)

    def original_line(self, filename: str, line: int) -> int:
        """The file's line for `line` of the inlined source (the first Jinja tag on it)."""
        mapping = self.line_maps.get(filename, [])
        same = [original for inlined, original in mapping if inlined == line]
        if same:
            return same[0]
        before = [(inlined, original) for inlined, original in mapping if inlined < line]
        if not before:
            return line
        inlined, original = before[-1]
        return original + line - inlined


class _Environment(Environment):
    def join_path(self, template: str, parent: str) -> str:
        """A layout in the locale of the template that uses it: `_layouts/base.html` from
        `birthday/hy/body.html` is `_layouts/hy/base.html`."""
        folder, _, part = template.rpartition("/")
        if folder == LAYOUTS:
            return f"{LAYOUTS}/{parent.rsplit('/', 2)[-2]}/{part}"
        return template

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Contexts are plain dicts: try the key first (the default tries the attribute first
        # and pays for an AttributeError on every `customer.first_name`).
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


# --- formatting for the customer's locale (Babel), cached: values repeat across a send ------
@lru_cache(maxsize=65_536)
def _date(value: date, locale: str, style: str) -> str:
    return format_date(value, style, locale=locale)


@lru_cache(maxsize=65_536)
def _money(amount: Decimal, currency: str, locale: str) -> str:
    return format_currency(amount, currency, locale=locale)


@lru_cache(maxsize=4_096)
def _percent(value: float, locale: str) -> str:
    return format_percent(value / 100, locale=locale, format="#,##0.##%")


@lru_cache(maxsize=65_536)
def _number(value: Decimal, locale: str) -> str:
    return format_decimal(value, locale=locale)


class Formatter:
    """`fmt` in templates: dates in the customer's timezone, money, percents and numbers."""

    __slots__ = ("locale", "zone")

    def __init__(self, locale: str, timezone: str | None):
        self.locale, self.zone = locale, _zone(timezone)

    def date(self, value: date | datetime | str, style: str = "long") -> str:
        if isinstance(value, str):  # template fields arrive JSON-safe: ISO text
            value = datetime.fromisoformat(value) if len(value) > 10 else date.fromisoformat(value)
        if isinstance(value, datetime):
            aware = value if value.tzinfo else value.replace(tzinfo=UTC)
            value = aware.astimezone(self.zone).date()
        return _date(value, self.locale, style)

    def money(self, amount: float | str | Decimal, currency: str) -> str:
        return _money(Decimal(str(amount)), currency, self.locale)

    def percent(self, value: float) -> str:
        return _percent(float(value), self.locale)

    def number(self, value: float | int | str) -> str:
        return _number(Decimal(str(value)), self.locale)


@cache
def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ValueError, KeyError):
        return ZoneInfo("UTC")


@lru_cache(maxsize=1024)
def _language(locale: str | None) -> str | None:
    """'hy-AM', 'hy_AM.UTF-8', 'HY' -> 'hy'."""
    if not locale:
        return None
    return re.split(r"[-_.@]", locale.strip(), maxsplit=1)[0].lower() or None


class Renderer:
    """Renders `templates/<template>/<locale>/` for one email; see `get_renderer`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = Path(settings.templates_dir)
        layouts = self.root / LAYOUTS
        brand_file = layouts / "brand.yaml"
        brand = yaml.safe_load(brand_file.read_text(encoding="utf-8"))
        strings = brand.pop("strings")
        partials = {p.stem: p.read_text(encoding="utf-8") for p in layouts.glob("partials/*")}
        # What `[[ ... ]]` can name (at load) and what every render sees, per locale.
        self.static = {
            locale: {
                **DEFAULT_NAMESPACE,  # range, dict...: renders pass this dict as is
                "brand": brand,
                "t": words,
                "sender_address": settings.sender_address,
                "locale": locale,
                "partials": partials,
            }
            for locale, words in strings.items()
        }
        self.brand_file = str(brand_file)
        css = (layouts / "email.css").read_text(encoding="utf-8")
        self.loader = _Loader(self.root, css, self.static)
        self.env = _Environment(
            loader=self.loader,
            autoescape=select_autoescape(["html"], default_for_string=False),
            undefined=StrictUndefined,
            auto_reload=False,
            cache_size=-1,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.available = self._scan()
        self._compiled: dict[tuple[str, str], tuple[Template, Template, Template]] = {}

    def _scan(self) -> dict[str, frozenset[str]]:
        """{template name: locales with all three parts}, e.g. {'onboarding/day0': {'en', ...}}."""
        found: dict[str, set[str]] = {}
        for subject in self.root.glob("**/subject.txt"):
            folder = subject.parent
            relative = folder.parent.relative_to(self.root).as_posix()
            if relative.startswith("_") or not all((folder / p).is_file() for p in PARTS):
                continue
            found.setdefault(relative, set()).add(folder.name)
        return {name: frozenset(locales) for name, locales in found.items()}

    def templates(self) -> list[str]:
        return sorted(self.available)

    def resolve_locale(self, template: str, locale: str | None, default_locale: str) -> str:
        """Customer locale -> campaign default -> en, the first that has this template."""
        locales = self.available.get(template)
        if not locales:
            raise TemplateProblem(str(self.root / template), None, "no such template")
        for candidate in (_language(locale), default_locale, FALLBACK_LOCALE):
            if candidate in locales:
                return candidate
        reason = f"no locale folder for {default_locale!r} or {FALLBACK_LOCALE!r}"
        raise TemplateProblem(str(self.root / template), None, reason)

    def _templates_for(self, template: str, locale: str) -> tuple[Template, Template, Template]:
        key = (template, locale)
        compiled = self._compiled.get(key)
        if compiled is None:
            try:
                parts = tuple(self.env.get_template(f"{template}/{locale}/{p}") for p in PARTS)
            except TemplateSyntaxError as exc:
                file = exc.filename or str(self.root / template / locale)
                raise TemplateProblem(file, exc.lineno, exc.message or "syntax error") from None
            except TemplateNotFound as exc:
                folder = str(self.root / template / locale)
                raise TemplateProblem(folder, None, f"template not found: {exc}") from None
            compiled = self._compiled[key] = parts  # type: ignore[assignment]
        return compiled  # type: ignore[return-value]

    def render(
        self, template: str, locale: str | None, default_locale: str, context: dict[str, Any]
    ) -> Rendered:
        """Subject, HTML and text of one email. Raises `TemplateProblem` naming file and line."""
        locale_used = self.resolve_locale(template, locale, default_locale)
        parts = self._templates_for(template, locale_used)
        values = self._values(context, locale_used)
        try:
            # Template.render() copies the context twice per call; one shared dict is enough.
            subject, html, text = (
                "".join(t.root_render_func(t.new_context(values, shared=True))) for t in parts
            )
        except Exception as exc:
            raise self._problem(exc, parts, values, template, locale_used) from exc
        return Rendered(" ".join(subject.split()), html, text.strip() + "\n", locale_used)

    def _values(self, context: dict[str, Any], locale: str) -> dict[str, Any]:
        static = self.static.get(locale)
        if static is None:
            raise TemplateProblem(self.brand_file, None, f"no strings for {locale!r}")
        customer = context["customer"]
        first_name = (customer.get("first_name") or "").strip()
        fmt = Formatter(locale, customer.get("timezone"))
        values = {
            **static,
            **context,
            "first_name": first_name or static["t"]["fallback_name"],
            "fmt": fmt,
        }
        coupon = context.get("coupon")
        if coupon is not None:  # the terms, formatted once for the subject, HTML and text
            values["coupon"] = {
                **coupon,
                "discount": fmt.percent(coupon["discount_percent"]),
                "expires": fmt.date(coupon["expires_at"]),
            }
        return values

    def _problem(
        self,
        exc: Exception,
        parts: tuple[Template, ...],
        values: dict[str, Any],
        template: str,
        locale: str,
    ) -> TemplateProblem:
        """`exc` located in the template files: the public `Template.render` rewrites the
        traceback to template lines, so the failing render is repeated through it."""
        for part in parts:
            try:
                part.render(values)
            except Exception as located:
                exc = located
                break
        root = str(self.root)
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(root)]
        reason = f"{type(exc).__name__}: {exc}"
        if not frames:
            return TemplateProblem(str(self.root / template / locale), None, reason)
        frame = frames[-1]
        line = self.loader.original_line(frame.filename, frame.lineno or 0)
        return TemplateProblem(frame.filename, line, reason)

    def preflight(self, spec: CampaignSpec, occurrence_keys: list[str] | None = None) -> None:
        """Render every template x locale `spec` can use with sample data; raise the first
        `TemplateProblem`. With a missing first name too, so the fallback path is exercised."""
        keys = occurrence_keys if occurrence_keys is not None else self.occurrence_keys(spec)
        for key in keys:
            template = spec.template_for(key)
            for locale in LOCALES:
                for with_name in (True, False):
                    context = sample_context(spec, key, locale, with_name=with_name)
                    self.render(template, locale, spec.default_locale, context)

    def occurrence_keys(self, spec: CampaignSpec) -> list[str]:
        """Sample keys: for a template like 'onboarding/{occurrence_key}', the folders on disk."""
        if "{occurrence_key}" not in spec.template:
            return [SAMPLE_OCCURRENCE_KEYS.get(spec.occurrence_key, "sample")]
        pattern = re.escape(spec.template).replace(re.escape("{occurrence_key}"), "([^/]+)")
        keys = [m.group(1) for name in self.available if (m := re.fullmatch(pattern, name))]
        if not keys:
            reason = f"no template folder matches {spec.template!r}"
            raise TemplateProblem(str(spec.source_path or spec.id), None, reason)
        return sorted(keys)


@cache
def get_renderer(settings: Settings) -> Renderer:
    """One Renderer (and Jinja Environment) per settings per process."""
    return Renderer(settings)


# --- sample data for preflight and preview --------------------------------------------------
SAMPLE_AS_OF = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SAMPLE_DATA: dict[str, Any] = {
    "order_id": 100234,
    "order_amount": "89.90",
    "order_currency": "USD",
    "order_placed_at": "2026-11-18T14:05:00+00:00",
    "loyalty_tier": "gold",
    "loyalty_points": 1250,
}
SAMPLE_OCCURRENCE_KEYS = {
    "birthday_year": "2026",
    "order_id": "100234",
    "loyalty_tier": "gold",
    "lapse_started_on": "2026-08-20",
}
SAMPLE_NAMES = {"en": ("Emma", "Walker"), "hy": ("Անի", "Պետրոսյան"), "ka": ("ნინო", "ბერიძე")}
SAMPLE_TIMEZONES = {"en": "America/New_York", "hy": "Asia/Yerevan", "ka": "Asia/Tbilisi"}


def sample_context(
    spec: CampaignSpec | None,
    occurrence_key: str,
    locale: str,
    *,
    with_name: bool = True,
    as_of: datetime = SAMPLE_AS_OF,
) -> dict[str, Any]:
    """A render context shaped like delivery's, with plausible sample values.

    Without a spec (preview of a template no campaign uses) every known sample field and a
    coupon are included.
    """
    fields = spec.template_fields if spec is not None else list(SAMPLE_DATA)
    data = {name: SAMPLE_DATA.get(name, f"sample {name}") for name in fields}
    terms = spec.coupon if spec is not None else None
    discount, valid_days = (terms.discount_percent, terms.valid_days) if terms else (20.0, 7)
    with_coupon = spec is None or terms is not None
    names = SAMPLE_NAMES.get(locale, SAMPLE_NAMES["en"])
    timezone = SAMPLE_TIMEZONES.get(locale, "UTC")
    return {
        "customer": {
            "id": 42,
            "first_name": names[0] if with_name else None,
            "last_name": names[1],
            "email": "customer@example.com",
            "locale": locale,
            "timezone": timezone,
        },
        "campaign": {"id": spec.id if spec else "preview", "occurrence_key": occurrence_key},
        "data": data,
        "coupon": {
            "code": "BDAY7K3M9Q",
            "discount_percent": discount,
            "expires_at": as_of + timedelta(days=valid_days),
        }
        if with_coupon
        else None,
        "unsubscribe_url": "https://example.com/lifecycle/unsubscribe/sample-token",
        "local_date": as_of.astimezone(_zone(timezone)).date(),
    }
