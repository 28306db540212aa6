"""Small inline SVG charts, drawn on the server: no JavaScript, nothing to vendor."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

PALETTE = ("#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed")
WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 14, 34


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _frame(
    labels: Sequence[str], top: float, fmt: Callable[[float], str], title: str
) -> tuple[list[str], Callable[[int], float], Callable[[float], float]]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(len(labels), 1)

    def x(i: int) -> float:
        return LEFT + slot * (i + 0.5)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for k in range(5):
        value = top * k / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            'class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" class="axis" text-anchor="end">'
            f"{escape(fmt(value))}</text>"
        )
    every = max(1, math.ceil(len(labels) / 7))
    for i, label in enumerate(labels):
        if i % every == 0 or i == len(labels) - 1:
            parts.append(
                f'<text x="{x(i):.1f}" y="{HEIGHT - 12}" class="axis" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    return parts, x, y


def line_chart(
    title: str,
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
    fmt: Callable[[float], str] = lambda v: f"{v:,.0f}",
) -> Markup:
    """One line per series; None values leave a gap."""
    values = [v for points in series.values() for v in points if v is not None]
    top = _nice_max(max(values, default=0))
    parts, x, y = _frame(labels, top, fmt, title)
    for colour, (name, points) in zip(PALETTE, series.items(), strict=False):
        segment: list[str] = []
        for i, value in enumerate(points):
            if value is None:
                segment = []
                continue
            segment.append(f"{x(i):.1f},{y(value):.1f}")
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(value):.1f}" r="3" fill="{colour}">'
                f"<title>{escape(name)} {escape(labels[i])}: {escape(fmt(value))}</title></circle>"
            )
            if len(segment) > 1:
                parts.append(
                    f'<polyline points="{" ".join(segment[-2:])}" fill="none" '
                    f'stroke="{colour}" stroke-width="2"/>'
                )
    parts.append("</svg>")
    return Markup("".join(parts)) + legend(list(series))


def bar_chart(
    title: str,
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    fmt: Callable[[float], str] = lambda v: f"{v:,.0f}",
) -> Markup:
    """Grouped bars: one bar per series in each label's slot."""
    top = _nice_max(max((v for points in series.values() for v in points), default=0))
    parts, x, y = _frame(labels, top, fmt, title)
    slot = (WIDTH - LEFT - RIGHT) / max(len(labels), 1)
    bar = slot * 0.8 / max(len(series), 1)
    for s, (colour, (name, points)) in enumerate(zip(PALETTE, series.items(), strict=False)):
        for i, value in enumerate(points):
            left = x(i) - slot * 0.4 + s * bar
            parts.append(
                f'<rect x="{left:.1f}" y="{y(value):.1f}" width="{max(bar - 1, 1):.1f}" '
                f'height="{y(0) - y(value):.1f}" fill="{colour}" rx="1">'
                f"<title>{escape(name)} {escape(labels[i])}: {escape(fmt(value))}</title></rect>"
            )
    parts.append("</svg>")
    return Markup("".join(parts)) + legend(list(series))


def interval_chart(rows: Sequence[tuple[str, float, float, float]]) -> Markup:
    """Point estimates with 95% intervals around zero, in percentage points."""
    height = 30 * len(rows) + 30
    reach = max((max(abs(lo), abs(hi)) for _, _, lo, hi in rows), default=1) or 1
    reach = _nice_max(reach * 100)
    left, right = 150, WIDTH - 20

    def x(points: float) -> float:
        return left + (right - left) * (points + reach) / (2 * reach)

    parts = [
        f'<svg class="chart intervals" viewBox="0 0 {WIDTH} {height}" role="img" '
        'aria-label="Uplift against the holdout group" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="8" y2="{height - 22}" class="zero"/>',
    ]
    for tick in (-reach, -reach / 2, 0, reach / 2, reach):
        parts.append(
            f'<text x="{x(tick):.1f}" y="{height - 6}" class="axis" text-anchor="middle">'
            f"{tick:+.0f} pts</text>"
        )
    for i, (label, diff, low, high) in enumerate(rows):
        cy = 22 + 30 * i
        colour = PALETTE[1] if low > 0 else PALETTE[3] if high < 0 else "#64748b"
        parts.append(
            f'<text x="{left - 10}" y="{cy + 4}" class="label" text-anchor="end">'
            f"{escape(label)}</text>"
            f'<line x1="{x(low * 100):.1f}" x2="{x(high * 100):.1f}" y1="{cy}" y2="{cy}" '
            f'stroke="{colour}" stroke-width="3" stroke-linecap="round"/>'
            f'<circle cx="{x(diff * 100):.1f}" cy="{cy}" r="5" fill="{colour}"/>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def legend(names: Sequence[str]) -> Markup:
    items = "".join(
        f'<span><i style="background:{colour}"></i>{escape(name)}</span>'
        for colour, name in zip(PALETTE, names, strict=False)
    )
    return Markup(f'<div class="legend">{items}</div>')
