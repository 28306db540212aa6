"""Rendering throughput: the birthday email (subject + HTML + text) on one core.

Every email gets its own context: a distinct customer (name, email, locale mix en/hy/ka,
timezone), coupon code, expiry and unsubscribe token, built before the clock starts. The timed
loop is exactly what delivery calls per recipient: `Renderer.render(...)` for all three parts.
Templates are compiled (and their CSS inlined) once, before timing, as in a real process.

    python -m benchmarks.bench_render              # 50,000 emails
    python -m benchmarks.bench_render --emails 2000  # smoke run
(`BENCH_RENDER_EMAILS` sets the default for --emails.) Target: >= 20,000 emails/s.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import css_inline

from lifecycle.core.campaigns import load_campaigns
from lifecycle.core.config import load_settings
from lifecycle.core.render import Renderer
from lifecycle.feedback.unsubscribe import token_for
from lifecycle.store.coupons import new_code

FIRST_NAMES = ["Emma", "Անի", "ნინო", "Liam", "Արամ", "გიორგი", None, "<b>Zoë</b>"]
LAST_NAMES = ["Walker", "Պետրոսյան", "ბერიძე", None]
LOCALES = ["en", "hy", "ka", "hy-AM", "ka_GE", "fr", None]
TIMEZONES = ["Asia/Yerevan", "Asia/Tbilisi", "America/New_York", "Europe/Berlin", "UTC"]


def contexts(count: int, seed: int = 7) -> list[tuple[str | None, dict[str, Any]]]:
    rng = random.Random(seed)
    signing = load_settings(token_secrets=(secrets.token_urlsafe(32),))
    as_of = datetime(2026, 11, 24, 6, 5, tzinfo=UTC)
    result = []
    for customer_id in range(1, count + 1):
        email = f"customer{customer_id}@example.com"
        timezone = rng.choice(TIMEZONES)
        run_at = as_of + timedelta(hours=rng.randrange(24 * 30))
        context = {
            "customer": {
                "id": customer_id,
                "first_name": rng.choice(FIRST_NAMES),
                "last_name": rng.choice(LAST_NAMES),
                "email": email,
                "locale": rng.choice(LOCALES),
                "timezone": timezone,
            },
            "campaign": {"id": "birthday", "occurrence_key": str(run_at.year)},
            "data": {},
            "coupon": {
                "code": new_code(),
                "discount_percent": rng.choice([10.0, 15.0, 20.0]),
                "expires_at": run_at + timedelta(days=7),
            },
            "unsubscribe_url": "https://shop.example/lifecycle/unsubscribe/"
            + token_for(signing, customer_id),
            "local_date": run_at.date(),
        }
        result.append((context["customer"]["locale"], context))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--emails", type=int, default=int(os.environ.get("BENCH_RENDER_EMAILS", "50000"))
    )
    args = parser.parse_args()
    settings = load_settings()
    spec = load_campaigns(settings.campaigns_dir).specs["birthday"]

    started = time.perf_counter()
    renderer = Renderer(settings)
    renderer.preflight(spec)  # compiles every locale's templates, as delivery's preflight does
    setup = time.perf_counter() - started

    work = contexts(args.emails)
    size = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for locale, context in work:
        rendered = renderer.render(spec.template, locale, spec.default_locale, context)
        size += len(rendered.subject) + len(rendered.html) + len(rendered.text)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started

    sample = renderer.render(spec.template, "en", "en", work[0][1]).html
    runs = 200
    inline_started = time.perf_counter()
    for _ in range(runs):
        css_inline.inline(sample)
    per_inline = (time.perf_counter() - inline_started) / runs

    rate = args.emails / elapsed
    print(f"templates compiled + CSS inlined once: {setup * 1000:.0f} ms")
    print(
        f"birthday email (subject + HTML + text), {args.emails:,} distinct contexts: "
        f"{rate:,.0f} emails/s on one core ({elapsed / args.emails * 1e6:.1f} µs/email, "
        f"avg {size / args.emails / 1024:.1f} KiB)"
    )
    print(f"by CPU time of this process: {args.emails / cpu:,.0f} emails/s")
    print(f"for comparison, css-inline per email would add {per_inline * 1e6:.0f} µs/email")
    print(f"target >= 20,000 emails/s (wall): {'met' if rate >= 20_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
