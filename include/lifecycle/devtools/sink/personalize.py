"""What each recipient of an accepted request receives, as SendGrid builds it: one email per
personalization, its substitutions applied to the subject and to every content part.

Substitution is one left-to-right pass, longest tag first where tags overlap; a substituted
value is not scanned again (our sender never puts a tag inside a value, so a rescanning
implementation would give the same emails).
"""

from __future__ import annotations

import re
from typing import Any


def substitute(text: str, substitutions: dict[str, str]) -> str:
    if not substitutions or not text:
        return text
    tags = sorted(substitutions, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(tag) for tag in tags))
    return pattern.sub(lambda match: substitutions[match.group(0)], text)


def emails(body: dict[str, Any], with_content: bool) -> list[dict[str, Any]]:
    """Per personalization: to, custom_args (message-level merged under the personalization's),
    subject, and with `with_content` the headers and the content parts by type."""
    result = []
    for item in body["personalizations"]:
        substitutions = item.get("substitutions") or {}
        email: dict[str, Any] = {
            "to": [address["email"].lower() for address in item["to"]],
            "custom_args": {**(body.get("custom_args") or {}), **(item.get("custom_args") or {})},
            "subject": substitute(item.get("subject") or body.get("subject") or "", substitutions),
        }
        if with_content:
            email["headers"] = {**(body.get("headers") or {}), **(item.get("headers") or {})}
            email["content"] = {
                part["type"]: substitute(part["value"], substitutions)
                for part in body.get("content", [])
            }
        result.append(email)
    return result
