"""UTM parameters on every link of every campaign email, added when templates are loaded."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

from lifecycle.core import render
from lifecycle.core.campaigns import LOCALES
from lifecycle.core.config import load_settings
from lifecycle.core.samples import sample_context
from lifecycle.core.templates import tag_links

SHIPPED = load_settings().templates_dir
UNSUBSCRIBE = sample_context(None, "x", "en")["unsubscribe_url"]
UTM = "{{ utm_query }}"


@pytest.mark.parametrize(
    ("source", "tagged"),
    [
        ('<a href="https://s.io/a">', f'<a href="https://s.io/a?{UTM}">'),
        ("<a href='https://s.io/'>", f"<a href='https://s.io/?{UTM}'>"),
        (
            '<a class="b" href="https://s.io/a?x=1&amp;y=2#top">',
            f'<a class="b" href="https://s.io/a?x=1&amp;y=2&amp;{UTM}#top">',
        ),
        ('<a href="https://s.io/a#top">', f'<a href="https://s.io/a?{UTM}#top">'),
        ('<a href="https://s.io/a?">', f'<a href="https://s.io/a?{UTM}">'),
        (
            "<a href=\"https://s.io/o/{{ data.id }}?n={{ x|default('#?') }}\">",
            f"<a href=\"https://s.io/o/{{{{ data.id }}}}?n={{{{ x|default('#?') }}}}&amp;{UTM}\">",
        ),
        ('<a href="mailto:care@s.io?subject=Hi">', None),
        ('<a href="tel:+37410000000">', None),
        ('<a href="#top">', None),
        ('<a href="{{ unsubscribe_url }}">', None),
        ('<a href="https://s.io/?utm_source=partner">', None),
        ('<img src="https://s.io/logo.png">', None),
    ],
)
def test_html_links_get_the_utm_parameters_and_nothing_else_changes(
    source: str, tagged: str | None
) -> None:
    assert tag_links(source, html=True) == (tagged or source)


@pytest.mark.parametrize(
    ("source", "tagged"),
    [
        ("Shop: https://s.io/new.", f"Shop: https://s.io/new?{UTM}."),
        ("(https://s.io/a?x=1)", f"(https://s.io/a?x=1&{UTM})"),
        (
            "https://s.io/f?o={{ o|urlencode }}&s={{ s }}",
            f"https://s.io/f?o={{{{ o|urlencode }}}}&s={{{{ s }}}}&{UTM}",
        ),
        ("https://s.io/a#faq", f"https://s.io/a?{UTM}#faq"),
        ("Write to care@s.io or mailto:care@s.io", None),
        ("Unsubscribe: {{ unsubscribe_url }}", None),
    ],
)
def test_text_links_get_the_utm_parameters_and_nothing_else_changes(
    source: str, tagged: str | None
) -> None:
    assert tag_links(source, html=False) == (tagged or source)


def links(rendered: render.Rendered) -> list[str]:
    hrefs = re.findall(r'href="([^"]*)"', rendered.html)
    urls = re.findall(r"(?:https?|mailto):[^\s<>\"']+", rendered.text)
    return [href.replace("&amp;", "&") for href in hrefs] + [u.rstrip(".,;:!?)") for u in urls]


@pytest.mark.parametrize("variant", [None, "b"])
def test_every_link_of_every_template_and_locale_carries_the_utm_parameters(
    tmp_path: Path, variant: str | None
) -> None:
    renderer = render.Renderer(load_settings(home=tmp_path))
    expected = [
        ("utm_source", "lifecycle"),
        ("utm_medium", "email"),
        ("utm_campaign", "onboarding"),
        *([("utm_content", variant)] if variant else []),
    ]
    checked = 0
    for template in renderer.templates():
        for locale in LOCALES:
            context = sample_context(None, "x", locale)
            context["campaign"]["id"] = "onboarding"
            context["variant"] = {"id": variant} if variant else None
            found = links(renderer.render(template, locale, "en", context))
            # Links to our own pages (unsubscribe, survey answers) are made at render time and
            # left alone: they are not marketing links.
            own = [url for url in found if url == UNSUBSCRIBE or "/lifecycle/feedback/" in url]
            assert not any("utm_" in url for url in own), own
            web = [url for url in found if url.startswith("http") and url not in own]
            assert web, (template, locale)
            for url in web:
                query = parse_qsl(urlsplit(url).query)
                assert query[-len(expected) :] == expected, (template, locale, url)
                assert [k for k, _ in query].count("utm_source") == 1, url
                checked += 1
            assert UNSUBSCRIBE in found  # the unsubscribe link stays as it is
    assert checked > 100


def test_query_strings_anchors_and_mailto_survive_loading_and_css_inlining(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(SHIPPED, templates)
    for locale in LOCALES:
        folder = templates / "links" / locale
        folder.mkdir(parents=True)
        (folder / "subject.txt").write_text("Links https://s.io/x", encoding="utf-8")
        (folder / "body.txt").write_text(
            '{% extends "_layouts/base.txt" %}{% block content %}'
            "Order: https://s.io/o?id={{ data.order_id }}#items. Mail care@s.io.\n"
            "{% endblock %}",
            encoding="utf-8",
        )
        (folder / "body.html").write_text(
            '{% extends "_layouts/base.html" %}{% block content %}'
            '<p><a href="https://s.io/o?id={{ data.order_id }}&amp;v=2#items">order</a> '
            '<a href="mailto:care@s.io?subject=Order%20{{ data.order_id }}">mail</a> '
            '<a href="#top">top</a></p>{% endblock %}',
            encoding="utf-8",
        )
    brand = templates / "_layouts/brand.yaml"
    config = yaml.safe_load(brand.read_text(encoding="utf-8"))
    config["utm"] = {"source": "crm", "names": {**config["utm"]["names"], "campaign": "cmp"}}
    brand.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")

    renderer = render.Renderer(load_settings(home=tmp_path, templates_dir=templates))
    context = sample_context(None, "x", "en")
    context["variant"] = {"id": "b"}
    rendered = renderer.render("links", "en", "en", context)
    utm = "utm_source=crm&amp;utm_medium=email&amp;cmp=preview&amp;utm_content=b"
    assert f'href="https://s.io/o?id=100234&amp;v=2&amp;{utm}#items"' in rendered.html
    assert 'href="mailto:care@s.io?subject=Order%20100234"' in rendered.html
    assert 'href="#top"' in rendered.html
    assert f"https://s.io/o?id=100234&{utm.replace('&amp;', '&')}#items. Mail care@s.io." in (
        rendered.text
    )
    assert rendered.subject == "Links https://s.io/x"  # subjects are not links
