"""List-Unsubscribe headers and the signed unsubscribe tokens they carry."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest

from lifecycle.core.config import Settings, load_settings
from lifecycle.feedback import compliance, unsubscribe

SECRET = "test-secret-never-logged"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        home=tmp_path,
        public_url="https://shop.example",
        unsubscribe_secret=SECRET,
        unsubscribe_mailbox="unsubscribe@shop.example",
    )


def test_headers_carry_https_one_click_and_mailto(settings):
    token = unsubscribe.token_for(settings, 42)
    url = unsubscribe.unsubscribe_url(settings, token)
    headers = compliance.list_unsubscribe_headers(settings, url, token)

    assert set(headers) == {"List-Unsubscribe", "List-Unsubscribe-Post"}
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"  # RFC 8058
    https, mailto = [part.strip() for part in headers["List-Unsubscribe"].split(",")]
    assert https == f"<{url}>" and url.startswith("https://shop.example/lifecycle/unsubscribe/")
    assert mailto.startswith("<mailto:unsubscribe@shop.example?subject=") and mailto.endswith(">")
    assert unquote(mailto[1:-1].split("subject=", 1)[1]) == f"unsubscribe {token}"
    assert SECRET not in str(headers)
    assert all("\r" not in v and "\n" not in v for v in headers.values())


@pytest.mark.parametrize(
    ("url", "token"),
    [
        ("https://shop.example/u/abc\r\nBcc: victim@example.com", "abc"),
        ("https://shop.example/u/a>b", "a>b"),
        ("javascript:alert(1)", "abc"),
        ("https://shop.example/u/abc", "ab c"),
    ],
)
def test_header_injection_is_refused(settings, url, token):
    with pytest.raises(ValueError):
        compliance.list_unsubscribe_headers(settings, url, token)


def test_a_bad_mailbox_setting_is_refused(tmp_path):
    settings = load_settings(home=tmp_path, unsubscribe_mailbox="nobody")
    with pytest.raises(ValueError, match="LIFECYCLE_UNSUBSCRIBE_MAILBOX"):
        compliance.list_unsubscribe_headers(settings, "https://x.example/u/t", "t")
