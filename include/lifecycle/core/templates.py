"""Email templates as Jinja loads them: localized layouts, brand strings and inlined CSS.

Templates live in `templates/<template>/<locale>/{subject.txt, body.html, body.txt}` and extend
the shared layouts in `templates/_layouts/`. `TemplateLoader` prepares each source once per
locale: `[[ ... ]]` names are replaced by that locale's strings from
`templates/_layouts/brand.yaml`, and CSS from `templates/_layouts/email.css` is inlined into
each HTML template's *source* (Jinja tags are shielded from the HTML parser meanwhile), so
every email is just a Jinja render: no HTML parsing per email.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import css_inline
from jinja2 import Environment, FileSystemLoader

LAYOUTS = "_layouts"
PARTS = ("subject.txt", "body.html", "body.txt")
LOAD_TIME_NAMES = ("brand", "t", "partials", "locale")  # what `[[ ... ]]` can name

_JINJA_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_PLACEHOLDER = re.compile(r"@@J(\d+)@@|<!--J(\d+)-->")
_STATIC = re.compile(r"\[\[\s*([A-Za-z_][\w.]*)\s*\]\]")
_HREF = re.compile(
    r"""(?P<lead>\bhref\s*=\s*)(?P<q>["'])(?P<url>https?://.*?)(?P=q)""", re.I | re.S
)
_TEXT_URL = re.compile(r"""https?://(?:\{\{.*?\}\}|[^\s{}<>"'])+""")
_URL_TRAIL = ".,;:!?)"  # sentence punctuation after a URL in text is not part of it
UTM_QUERY = "{{ utm_query }}"  # the UTM parameters, per email (`render.Renderer.utm_query`)


class TemplateProblem(ValueError):
    """A template that cannot render: names the file, the line and the reason."""

    def __init__(self, file: str, line: int | None, reason: str):
        self.file, self.line, self.reason = file, line, reason
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {reason}")

    def __reduce__(self) -> tuple[type[TemplateProblem], tuple[str, int | None, str]]:
        return type(self), (self.file, self.line, self.reason)  # picklable across processes


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


def tag_links(source: str, *, html: bool) -> str:
    """`source` with the UTM parameters added to every http(s) link, as Jinja text.

    HTML: every `href` that is an http(s) URL; text: every http(s) URL. The parameters join the
    existing query string (or start one) before any `#anchor`; `mailto:`, `tel:`, anchors and
    links made wholly at render time (the unsubscribe link) are left alone, and so is a link
    that already carries `utm_` parameters.
    """
    joiner = "&amp;" if html else "&"

    def tagged(url: str) -> str:
        if "utm_" in url:
            return url
        masked = _JINJA_TAG.sub(lambda m: "x" * len(m.group(0)), url)  # '#', '?' of Jinja
        cut = masked.find("#")
        cut = len(url) if cut < 0 else cut
        query = masked[:cut]
        if "?" not in query:
            separator = "?"
        elif query.endswith(("?", "&", "&amp;")):
            separator = ""
        else:
            separator = joiner
        return f"{url[:cut]}{separator}{UTM_QUERY}{url[cut:]}"

    if html:
        return _HREF.sub(lambda m: f"{m['lead']}{m['q']}{tagged(m['url'])}{m['q']}", source)

    def in_text(match: re.Match[str]) -> str:
        url = match.group(0)
        kept = url.rstrip(_URL_TRAIL)
        return tagged(kept) + url[len(kept) :]

    return _TEXT_URL.sub(in_text, source)


class TemplateLoader(FileSystemLoader):
    """Loads templates from disk and prepares each source once, for one locale:

    1. `[[ brand.name ]]`, `[[ t.unsubscribe ]]`, `[[ locale ]]`... are replaced by the
       values from brand.yaml for the template's locale (the text goes in as template
       source, so a brand.yaml string may itself hold `{{ ... }}` evaluated per email);
       `[[ partials.coupon ]]` inserts `_layouts/partials/coupon.html` (on one line);
    2. every link of the bodies gets the UTM parameters (`tag_links`);
    3. `.html` sources get the email CSS inlined.

    Layouts are shared by all locales: `_layouts/hy/base.html` is `_layouts/base.html` prepared
    for hy (see `TemplateEnvironment.join_path`).
    """

    def __init__(self, root: Path, css: str, static: dict[str, dict[str, Any]]):
        super().__init__(str(root))
        self.css, self.static = css, static
        self.line_maps: dict[str, list[tuple[int, int]]] = {}

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        folder, locale, part = template.rsplit("/", 2)
        path = f"{LAYOUTS}/{part}" if folder == LAYOUTS else template
        source, filename, uptodate = super().get_source(environment, path)
        source = self._substitute(source, filename, locale)
        if part != "subject.txt":
            source = tag_links(source, html=part.endswith(".html"))
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


class TemplateEnvironment(Environment):
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
