"""Email rendering: one `Renderer` per process compiles each template x locale once.

`render` picks the locale (the customer's, else the campaign default, else en), renders
subject, HTML and text with the customer's `fmt` (`lifecycle.core.formatting`), and reports a
failure as a `TemplateProblem` naming the template file and line. `preflight` renders every
template x locale a campaign can use with sample data (`lifecycle.core.samples`) before a run.
Loading, brand strings and CSS inlining: `lifecycle.core.templates`.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml
from jinja2 import (
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    select_autoescape,
)
from jinja2.defaults import DEFAULT_NAMESPACE

from lifecycle.core import substitutions
from lifecycle.core.campaigns import LOCALES, CampaignSpec, Variant
from lifecycle.core.config import Settings
from lifecycle.core.formatting import Formatter
from lifecycle.core.samples import SAMPLE_OCCURRENCE_KEYS, sample_context, with_variant
from lifecycle.core.templates import (
    LAYOUTS,
    PARTS,
    TemplateEnvironment,
    TemplateLoader,
    TemplateProblem,
)

# A variant's subject line (Jinja): one for every locale, or one per locale; None: subject.txt
Subject = str | Mapping[Any, str] | None

FALLBACK_LOCALE = "en"


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str
    locale_used: str


@lru_cache(maxsize=1024)
def _language(locale: str | None) -> str | None:
    """'hy-AM', 'hy_AM.UTF-8', 'HY' -> 'hy'."""
    if not locale:
        return None
    return re.split(r"[-_.@]", locale.strip(), maxsplit=1)[0].lower() or None


@dataclass(frozen=True)
class UtmSettings:
    """brand.yaml `utm`: the values and parameter names of the UTM tags on every link."""

    source: str = "lifecycle"
    medium: str = "email"
    names: dict[str, str] = field(
        default_factory=lambda: {
            "source": "utm_source",
            "medium": "utm_medium",
            "campaign": "utm_campaign",
            "content": "utm_content",
        }
    )

    def query(self, campaign_id: str, variant_id: str | None) -> str:
        """`utm_source=...&utm_medium=email&utm_campaign=<campaign>[&utm_content=<variant>]`."""
        values = {"source": self.source, "medium": self.medium, "campaign": campaign_id}
        if variant_id is not None:
            values["content"] = variant_id
        return urlencode({self.names[key]: value for key, value in values.items()})


class Renderer:
    """Renders `templates/<template>/<locale>/` for one email; see `get_renderer`."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = Path(settings.templates_dir)
        layouts = self.root / LAYOUTS
        brand_file = layouts / "brand.yaml"
        brand = yaml.safe_load(brand_file.read_text(encoding="utf-8"))
        strings = brand.pop("strings")
        self.utm = UtmSettings(**brand.pop("utm", {}))
        self._utm_queries: dict[tuple[str, str | None], str] = {}
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
        self.loader = TemplateLoader(self.root, css, self.static)
        self.env = TemplateEnvironment(
            loader=self.loader,
            autoescape=select_autoescape(["html"], default_for_string=False),
            undefined=StrictUndefined,
            auto_reload=False,
            cache_size=-1,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=substitutions.finalize,
        )
        self.available = self._scan()
        self._compiled: dict[tuple[str, str], tuple[Template, ...]] = {}
        self._subjects: dict[str, Template] = {}

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

    def _templates_for(self, template: str, locale: str) -> tuple[Template, ...]:
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
            compiled = self._compiled[key] = parts
        return compiled

    def _subject_template(self, source: str) -> Template:
        """A variant's subject line (Jinja source from its spec), compiled once."""
        compiled = self._subjects.get(source)
        if compiled is None:
            try:
                compiled = self._subjects[source] = self.env.from_string(source)
            except TemplateSyntaxError as exc:
                reason = exc.message or "syntax error"
                raise TemplateProblem("variant subject", None, reason) from None
        return compiled

    def render(
        self,
        template: str,
        locale: str | None,
        default_locale: str,
        context: dict[str, Any],
        *,
        subject: Subject = None,
    ) -> Rendered:
        """Subject, HTML and text of one email. Raises `TemplateProblem` naming file and line.

        `subject` (a variant's, one for all locales or one per locale) replaces subject.txt.
        """
        locale_used, values = self.values(template, locale, default_locale, context)
        return self.render_values(template, locale_used, values, subject=subject)

    def values(
        self, template: str, locale: str | None, default_locale: str, context: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """The locale an email renders in and the values its templates see."""
        locale_used = self.resolve_locale(template, locale, default_locale)
        return locale_used, self._values(context, locale_used)

    def render_values(
        self, template: str, locale_used: str, values: dict[str, Any], *, subject: Subject = None
    ) -> Rendered:
        parts = self._parts(template, locale_used, subject)
        try:
            # Template.render() copies the context twice per call; one shared dict is enough.
            line, html, text = (
                "".join(t.root_render_func(t.new_context(values, shared=True))) for t in parts
            )
        except Exception as exc:
            raise self._problem(exc, parts, values, template, locale_used) from exc
        return Rendered(" ".join(line.split()), html, text.strip() + "\n", locale_used)

    def render_subject(
        self, template: str, locale_used: str, values: dict[str, Any], *, subject: Subject = None
    ) -> str:
        parts = self._parts(template, locale_used, subject)
        try:
            line = "".join(parts[0].root_render_func(parts[0].new_context(values, shared=True)))
        except Exception as exc:
            raise self._problem(exc, parts, values, template, locale_used) from exc
        return " ".join(line.split())

    def _parts(self, template: str, locale_used: str, subject: Subject) -> tuple[Template, ...]:
        """The compiled subject, HTML and text; a variant's `subject` replaces subject.txt."""
        parts = self._templates_for(template, locale_used)
        line = subject.get(locale_used) if isinstance(subject, Mapping) else subject
        if line is not None:
            parts = (self._subject_template(line), *parts[1:])
        return parts

    def render_shared(
        self, template: str, locale_used: str, values: dict[str, Any], paths: list[str]
    ) -> substitutions.SharedBody:
        """HTML and text once for all recipients whose values differ from `values` only at
        `paths`, those as substitution tags. Raises `substitutions.NotExpressible` for the first
        of `paths` the templates use other than by outputting it."""
        tags = substitutions.Tags()
        symbolic = substitutions.with_slots(values, paths, tags)
        parts = self._templates_for(template, locale_used)
        html, text = (
            "".join(t.root_render_func(t.new_context(symbolic, shared=True))) for t in parts[1:]
        )
        return substitutions.shared_body(html, text, tags)

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
        variant = context.get("variant")
        values["utm_query"] = self._utm_query(
            context["campaign"]["id"], variant["id"] if variant else None
        )
        coupon = context.get("coupon")
        if coupon is not None:  # the terms, formatted once for the subject, HTML and text
            values["coupon"] = {
                **coupon,
                "discount": fmt.percent(coupon["discount_percent"]),
                "expires": fmt.date(coupon["expires_at"]),
            }
        return values

    def _utm_query(self, campaign_id: str, variant_id: str | None) -> str:
        """Cached: urlencode per email was a tenth of composing a bulk request."""
        key = (campaign_id, variant_id)
        if (query := self._utm_queries.get(key)) is None:
            query = self._utm_queries[key] = self.utm.query(campaign_id, variant_id)
        return query

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
        arms: list[Variant | None] = [*spec.variants] or [None]
        for variant in arms:
            subject = variant.subject if variant else None
            for key in keys:
                template = spec.variant_template(variant.id if variant else None, key)
                for locale in LOCALES:
                    for with_name in (True, False):
                        context = sample_context(spec, key, locale, with_name=with_name)
                        if variant is None:
                            self.render(template, locale, spec.default_locale, context)
                            continue
                        context = with_variant(context, spec, variant.id)
                        try:
                            self.render(
                                template, locale, spec.default_locale, context, subject=subject
                            )
                        except TemplateProblem as exc:
                            reason = f"variant {variant.id!r}: {exc.reason}"
                            raise TemplateProblem(exc.file, exc.line, reason) from None

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
