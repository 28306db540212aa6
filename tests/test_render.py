"""Rendering: every shipped template x locale, escaping, locale fallback, formatting, preflight."""

from __future__ import annotations

import pickle
import re
import shutil
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from babel.dates import format_date
from babel.numbers import format_currency

from lifecycle.core.campaigns import LOCALES, CampaignSpec, load_campaigns
from lifecycle.core.config import PROJECT_ROOT, Settings, load_settings
from lifecycle.core.render import Renderer, get_renderer
from lifecycle.core.samples import sample_context
from lifecycle.core.templates import TemplateProblem, inline_css

SHIPPED = PROJECT_ROOT / "templates"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path, templates_dir=SHIPPED)


@pytest.fixture
def specs(settings: Settings) -> dict[str, CampaignSpec]:
    return load_campaigns(settings.campaigns_dir).specs


@pytest.fixture
def own_templates(tmp_path: Path) -> Path:
    """A private copy of the shipped templates that a test may break."""
    return Path(shutil.copytree(SHIPPED, tmp_path / "templates"))


def spec_for(specs: dict[str, CampaignSpec], template: str) -> CampaignSpec:
    for spec in specs.values():
        if template in {spec.template_for(k) for k in ("day0", "day3", "day7", "x")}:
            return spec
    raise AssertionError(f"no campaign uses {template}")


def test_every_template_and_locale_renders_complete(settings, specs):
    renderer = Renderer(settings)
    templates = renderer.templates()
    assert len(templates) == 8
    for template in templates:
        spec = spec_for(specs, template)
        assert renderer.available[template] == set(LOCALES), template
        for locale in LOCALES:
            context = sample_context(spec, "gold", locale)
            rendered = renderer.render(template, locale, "en", context)
            where = f"{template}/{locale}"
            assert rendered.locale_used == locale
            assert rendered.subject.strip() and "\n" not in rendered.subject, where
            assert rendered.html.startswith("<!DOCTYPE html>"), where
            assert f'lang="{locale}"' in rendered.html, where
            for body in (rendered.html, rendered.text):
                assert context["unsubscribe_url"] in body, where
                assert settings.sender_address in body, where
                assert "[[" not in body and "{{" not in body and "{%" not in body, where
            assert context["customer"]["first_name"] in rendered.text, where


def test_css_is_inlined_into_the_template_source_once(settings):
    renderer = Renderer(settings)
    source, _, _ = renderer.loader.get_source(renderer.env, "birthday/hy/body.html")
    assert 'style="' in source  # inlined when loaded, before any email is rendered
    layout, _, _ = renderer.loader.get_source(renderer.env, "_layouts/hy/base.html")
    assert "@media" in layout and 'style="' in layout
    assert "Հրաժարվել" in layout  # the layout is prepared for the Armenian locale
    rendered = renderer.render("birthday", "hy", "en", sample_context(None, "2026", "hy"))
    coupon_code = re.search(r'<div class="coupon-code" style="[^"]+">', rendered.html)
    assert coupon_code, "the coupon box carries its inlined style"


def test_first_name_is_escaped_in_html_and_plain_in_text(settings, specs):
    renderer = get_renderer(settings)
    context = sample_context(specs["birthday"], "2026", "en")
    context["customer"]["first_name"] = "<script>alert(1)</script>"
    context["customer"]["email"] = 'x"@example.com'
    rendered = renderer.render("birthday", "en", "en", context)
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert "<script>alert(1)</script>" in rendered.text  # plain text is not HTML


def test_missing_first_name_uses_the_localized_fallback(settings, specs):
    renderer = get_renderer(settings)
    fallbacks = {locale: renderer.static[locale]["t"]["fallback_name"] for locale in LOCALES}
    assert len(set(fallbacks.values())) == 3
    for locale, fallback in fallbacks.items():
        for missing in (None, "", "   "):
            context = sample_context(specs["onboarding"], "day0", locale)
            context["customer"]["first_name"] = missing
            rendered = renderer.render("onboarding/day0", locale, "en", context)
            assert fallback in rendered.text and fallback in rendered.html, locale


@pytest.mark.parametrize(
    ("customer_locale", "default_locale", "expected"),
    [
        ("hy", "en", "hy"),
        ("hy-AM", "en", "hy"),
        ("KA_ge.UTF-8", "en", "ka"),
        ("fr", "ka", "ka"),  # no French: the campaign's default
        ("fr", "en", "en"),
        (None, "hy", "hy"),
        ("", "ka", "ka"),
    ],
)
def test_locale_fallback(settings, specs, customer_locale, default_locale, expected):
    renderer = get_renderer(settings)
    context = sample_context(specs["onboarding"], "day3", expected)
    rendered = renderer.render("onboarding/day3", customer_locale, default_locale, context)
    assert rendered.locale_used == expected
    direct = renderer.render("onboarding/day3", expected, "en", context)
    assert rendered == direct


def test_a_locale_missing_for_one_template_falls_back_to_english(own_templates, tmp_path, specs):
    shutil.rmtree(own_templates / "feedback" / "ka")
    renderer = Renderer(load_settings(home=tmp_path, templates_dir=own_templates))
    context = sample_context(specs["feedback"], "1", "ka")
    assert renderer.render("feedback", "ka", "ka", context).locale_used == "en"
    assert (
        renderer.render("birthday", "ka", "en", sample_context(None, "2026", "ka")).locale_used
        == "ka"
    )
    renderer.preflight(specs["feedback"])  # ka customers get the English email: still valid


def test_unknown_template_is_a_template_problem(settings):
    with pytest.raises(TemplateProblem, match="no such template"):
        get_renderer(settings).render("nope", "en", "en", sample_context(None, "x", "en"))


def test_money_and_dates_follow_the_customer_locale_and_timezone(settings, specs):
    renderer = get_renderer(settings)
    for locale in LOCALES:
        context = sample_context(specs["feedback"], "7", locale)
        context["data"].update(order_amount="12345.5", order_currency="AMD")
        # 21:30 UTC on the 18th is already the 19th in Yerevan (UTC+4)
        context["data"]["order_placed_at"] = "2026-11-18T21:30:00+00:00"
        context["customer"]["timezone"] = "Asia/Yerevan"
        rendered = renderer.render("feedback", locale, "en", context)
        money = format_currency(Decimal("12345.5"), "AMD", locale=locale)
        placed = format_date(date(2026, 11, 19), "long", locale=locale)
        assert money in rendered.text and placed in rendered.text, locale

    context = sample_context(specs["birthday"], "2026", "ka")
    context["coupon"]["expires_at"] = datetime(2026, 12, 1, 22, 30, tzinfo=UTC)
    context["customer"]["timezone"] = "Asia/Tbilisi"
    rendered = renderer.render("birthday", "ka", "en", context)
    assert format_date(date(2026, 12, 2), "long", locale="ka") in rendered.html
    assert context["coupon"]["code"] in rendered.html and context["coupon"]["code"] in rendered.text


def test_feedback_has_a_rating_row_of_eleven_links(settings, specs):
    context = sample_context(specs["feedback"], "55", "en")
    context["rating_url"] = lambda score: f"https://shop.example/lifecycle/feedback/t&{score}"
    rendered = get_renderer(settings).render("feedback", "en", "en", context)
    scores = re.findall(r'href="https://shop.example/[a-z/]+/t&amp;(\d+)"', rendered.html)
    assert scores == [str(n) for n in range(11)]
    assert re.findall(r"/lifecycle/feedback/t&(\d+)", rendered.text) == scores


def test_preflight_passes_for_every_shipped_campaign(settings, specs):
    renderer = get_renderer(settings)
    for spec in specs.values():
        renderer.preflight(spec)
    assert renderer.occurrence_keys(specs["onboarding"]) == ["day0", "day3", "day7"]


def test_preflight_names_file_and_line_of_a_missing_variable(own_templates, tmp_path, specs):
    body = own_templates / "birthday" / "ka" / "body.html"
    lines = body.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if "partials.coupon" in line) + 1
    lines.insert(at, "<p>{{ data.gift_wrap }}</p>")
    body.write_text("\n".join(lines) + "\n", encoding="utf-8")
    renderer = Renderer(load_settings(home=tmp_path, templates_dir=own_templates))

    with pytest.raises(TemplateProblem) as caught:
        renderer.preflight(specs["birthday"])
    problem = caught.value
    assert Path(problem.file) == body
    assert problem.line == at + 1
    assert "gift_wrap" in problem.reason
    assert f"{body}:{at + 1}:" in str(problem)
    assert str(pickle.loads(pickle.dumps(problem))) == str(problem)
    # the same mistake found mid-send is reported the same way, never as a half email
    with pytest.raises(TemplateProblem, match="gift_wrap"):
        renderer.render("birthday", "ka", "en", sample_context(specs["birthday"], "2026", "ka"))


def test_preflight_names_file_and_line_of_a_syntax_error(own_templates, tmp_path, specs):
    text = own_templates / "loyalty" / "hy" / "body.txt"
    lines = text.read_text(encoding="utf-8").splitlines()
    lines[5] += " {% if data.loyalty_tier %}"  # never closed
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    renderer = Renderer(load_settings(home=tmp_path, templates_dir=own_templates))
    with pytest.raises(TemplateProblem) as caught:
        renderer.preflight(specs["loyalty"])
    assert Path(caught.value.file) == text
    assert caught.value.line is not None and caught.value.line >= 6


def test_preflight_catches_an_unknown_brand_string(own_templates, tmp_path, specs):
    subject = own_templates / "onboarding" / "day7" / "en" / "subject.txt"
    subject.write_text("Hello from [[ brand.slogan ]]\n", encoding="utf-8")
    renderer = Renderer(load_settings(home=tmp_path, templates_dir=own_templates))
    with pytest.raises(TemplateProblem) as caught:
        renderer.preflight(specs["onboarding"])
    assert Path(caught.value.file) == subject and caught.value.line == 1
    assert "brand.slogan" in caught.value.reason


def test_preflight_without_a_template_folder_for_a_spec(own_templates, tmp_path, specs):
    shutil.rmtree(own_templates / "loyalty")
    renderer = Renderer(load_settings(home=tmp_path, templates_dir=own_templates))
    with pytest.raises(TemplateProblem, match="no such template"):
        renderer.preflight(specs["loyalty"])


def test_get_renderer_is_one_per_settings(settings, tmp_path):
    assert get_renderer(settings) is get_renderer(settings)
    other = load_settings(home=tmp_path / "other", templates_dir=SHIPPED)
    assert get_renderer(other) is not get_renderer(settings)


def test_inline_css_keeps_jinja_tags_and_refuses_one_it_cannot_keep():
    kept = inline_css(
        '<p class="{% if vip %}vip{% endif %}">\n{{ name }}\n</p>', "p { color: red; }", "f.html"
    )
    assert kept.source.startswith('<p class="{% if vip %}vip{% endif %}" style="color: red;">')
    assert "{{ name }}" in kept.source
    with pytest.raises(TemplateProblem) as caught:
        inline_css("<p>ok</p>\n<p {{ attributes }}>x</p>", "p { color: red; }", "f.html")
    assert (caught.value.file, caught.value.line) == ("f.html", 2)


def test_sender_address_is_text_not_template(tmp_path, specs):
    address = "Shop <&> {{ 7 * 7 }}, 1 Main St"
    settings = load_settings(home=tmp_path, templates_dir=SHIPPED, sender_address=address)
    rendered = Renderer(settings).render(
        "birthday", "en", "en", sample_context(specs["birthday"], "2026", "en")
    )
    assert "Shop &lt;&amp;&gt; {{ 7 * 7 }}, 1 Main St" in rendered.html
    assert address in rendered.text
