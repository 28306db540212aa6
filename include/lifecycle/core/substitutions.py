"""One body for many recipients: their own values travel as SendGrid substitutions.

`Renderer.render_shared` renders a template once with a `Slot` in place of each value that
differs between recipients (`recipient_paths`). A slot may only be *output* (`{{ first_name }}`):
the environment's `finalize` turns it into a tag (`-lc<nonce>.<n>-`), one tag for the HTML
part and another for the text part, and each recipient's substitutions hold their own value
under those tags, HTML-escaped or raw, exactly as a direct render would output it.

Anything else done with a slot (a condition or loop over it, a comparison, a filter, a
function call, string operations) raises `NotExpressible` naming the value: substitutions
cannot express that, so the value has to be rendered directly and becomes part of the key
that groups recipients sharing a body (see `run.bulk`). `fmt` and `local_date` stand for the
recipient's timezone that way: a template using them shares a body per timezone.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from jinja2 import pass_eval_context
from jinja2.nodes import EvalContext
from markupsafe import Markup, escape

# Values that differ between recipients of one group; the rest (locale, brand strings, campaign
# id, coupon presence) is the same by construction of the group key.
RECIPIENT_VALUES = (
    "first_name",
    "unsubscribe_url",
    "rating_url",  # a function of the recipient's email: a call renders them directly
    "customer.id",
    "customer.first_name",
    "customer.last_name",
    "customer.email",
    "customer.timezone",
    "campaign.occurrence_key",
)
RECIPIENT_MAPS = ("data", "coupon")  # every key of these is a recipient's value
# What renders in the recipient's timezone: any use of these needs the timezone rendered
# directly (recipients then share a body per timezone).
TIMEZONE = "customer.timezone"
IN_TIMEZONE = ("fmt", "local_date")


class NotExpressible(Exception):
    """A recipient's value is used in a way a substitution cannot reproduce."""

    def __init__(self, path: str, how: str):
        super().__init__(f"{path} {how}")
        self.path = path


class Tags:
    """The tags of one shared body: (value path, HTML part?) -> tag, numbered in order of use."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(4)
        self.prefix = f"-lc{self.nonce}."
        self.by_use: dict[tuple[str, bool], str] = {}

    def tag(self, path: str, html: bool) -> str:
        tag = self.by_use.get((path, html))
        if tag is None:
            tag = self.by_use[(path, html)] = f"{self.prefix}{len(self.by_use)}-"
        return tag

    def path_of(self, tag: str) -> str:
        return next(path for (path, _), known in self.by_use.items() if known == tag)


class Slot:
    """Stands for one recipient value in a shared render; refuses every use but output, and
    output too where it stands for something that depends on the value at `path`."""

    __slots__ = ("output", "path", "tags")

    def __init__(self, path: str, tags: Tags, *, output: bool = True):
        self.path, self.tags, self.output = path, tags, output

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotExpressible(self.path, "is used in an expression, not just output")

    def __getattr__(self, name: str) -> NoReturn:
        raise NotExpressible(self.path, f"is read further (.{name})")


_REFUSED = """__str__ __repr__ __format__ __html__ __bool__ __len__ __iter__ __contains__
__getitem__ __call__ __hash__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __add__ __radd__ __sub__
__rsub__ __mul__ __rmul__ __truediv__ __rtruediv__ __floordiv__ __mod__ __rmod__ __pow__ __neg__
__pos__ __abs__ __int__ __float__ __index__ __round__"""
for _name in _REFUSED.split():
    setattr(Slot, _name, Slot._refuse)


@pass_eval_context
def finalize(eval_ctx: EvalContext, value: Any) -> Any:
    """The environment's `finalize`: a slot being output becomes its tag; all else is as is."""
    if type(value) is Slot:
        if not value.output:
            raise NotExpressible(value.path, "decides what is output")
        tag = value.tags.tag(value.path, eval_ctx.autoescape)
        return Markup(tag) if eval_ctx.autoescape else tag
    return value


def recipient_paths(values: dict[str, Any]) -> Iterator[str]:
    """The paths of `values` (a render's values) that hold a recipient's own value."""
    yield from RECIPIENT_VALUES
    for name in RECIPIENT_MAPS:
        if isinstance(values.get(name), dict):
            yield from (f"{name}.{key}" for key in values[name])


def leaf(values: dict[str, Any], path: str) -> Any:
    found: Any = values
    for key in path.split("."):
        found = found[key]
    return found


def with_slots(values: dict[str, Any], paths: list[str], tags: Tags) -> dict[str, Any]:
    """A copy of `values` with a slot at each path (the nested dicts copied, not shared)."""
    result = dict(values)
    for path in paths:
        *parents, last = path.split(".")
        target = result
        for key in parents:
            target[key] = dict(target[key])
            target = target[key]
        target[last] = Slot(path, tags)
    if TIMEZONE in paths:
        for name in IN_TIMEZONE:
            result[name] = Slot(TIMEZONE, tags, output=False)
    return result


def substitutions(values: dict[str, Any], tags: Tags) -> dict[str, str]:
    """One recipient's substitutions for a shared body: each value as its tag's part outputs it
    (what Jinja's autoescape outputs in the HTML part, `str` in the text part)."""
    return {
        tag: str(escape(leaf(values, path))) if html else str(leaf(values, path))
        for (path, html), tag in tags.by_use.items()
    }


@dataclass(frozen=True)
class SharedBody:
    """HTML and text with tags in place of recipient values, and what a recipient needs."""

    html: str
    text: str
    tags: Tags
    # Tags the text part starts or ends with: a render strips the text, so a value there with
    # whitespace on that side (or empty) renders differently alone; such a recipient goes alone.
    text_starts_with: str | None
    text_ends_with: str | None

    def substitutions(self, values: dict[str, Any]) -> dict[str, str] | None:
        """The recipient's substitutions, or None when their values cannot be substituted."""
        found = substitutions(values, self.tags)
        start, end = self.text_starts_with, self.text_ends_with
        if start is not None and found[start][:1].strip() == "":
            return None
        if end is not None and found[end][-1:].strip() == "":
            return None
        if any(self.tags.prefix in value for value in found.values()):
            return None  # a value holding a tag would be substituted again
        return found


def shared_body(html: str, text: str, tags: Tags) -> SharedBody:
    """`text` as rendered (before the render's strip)."""
    text = text.strip()
    pattern = re.escape(tags.prefix) + r"\d+-"
    start = re.match(pattern, text)
    end = re.search(f"(?:{pattern})$", text)
    return SharedBody(
        html, text + "\n", tags, start.group(0) if start else None, end.group(0) if end else None
    )
