"""SendGrid's documented rules for a `POST /v3/mail/send` body, with its 400 messages.

Checked: field types, required fields, 1000 personalizations / recipients, no duplicate
recipient, string custom_args < 10,000 UTF-8 bytes, string substitutions of at most 10,000
bytes per personalization, at most 10 unique non-empty ASCII
categories of <= 255 chars, non-empty content with text/plain then text/html first, reply_to
or reply_to_list, mail/tracking settings and asm. `validate` returns the first problem as
(message, field), the shape of SendGrid's error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

MAX_RECIPIENTS = 1000
MAX_CUSTOM_ARGS_BYTES = 10_000
MAX_SUBSTITUTIONS_BYTES = 10_000  # per personalization, tags and values (UTF-8)
MAX_SUBSTITUTIONS = 10_000
MAX_ADDRESS_LENGTH = 320
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255
MAX_GROUPS_TO_DISPLAY = 25

Problem = tuple[str, str | None]

# Field types of the mail/send OpenAPI, as JSON Schema names (SendGrid's errors read
# "Invalid type. Expected: object, given: string.").
MESSAGE_FIELDS = {
    "personalizations": "array",
    "from": "object",
    "reply_to": "object",
    "reply_to_list": "array",
    "subject": "string",
    "content": "array",
    "attachments": "array",
    "template_id": "string",
    "headers": "object",
    "categories": "array",
    # The OpenAPI says string, but SendGrid answers a string with "Expected: object".
    "custom_args": "object",
    "send_at": "integer",
    "batch_id": "string",
    "asm": "object",
    "ip_pool_name": "string",
    "mail_settings": "object",
    "tracking_settings": "object",
}
PERSONALIZATION_FIELDS = {
    "to": "array",
    "cc": "array",
    "bcc": "array",
    "from": "object",
    "subject": "string",
    "headers": "object",
    "substitutions": "object",
    "dynamic_template_data": "object",
    "custom_args": "object",
    "send_at": "integer",
}
# bool before int: True is an int in Python but a boolean in JSON.
JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)
# SendGrid wants text/plain first, then (AMP,) then text/html, then any other type.
CONTENT_ORDER = ("text/plain", "text/x-amp-html", "text/html")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in JSON_TYPES:
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _wrong_type(value: Any, expected: str, field_name: str) -> Problem | None:
    given = _json_type(value)
    if given == expected:
        return None
    return f"Invalid type. Expected: {expected}, given: {given}.", field_name


def _field_types(obj: dict[str, Any], expected: dict[str, str], prefix: str) -> Problem | None:
    for name, kind in expected.items():
        if name in obj and (problem := _wrong_type(obj[name], kind, prefix + name)):
            return problem
    return None


def _is_email(value: Any) -> bool:
    return isinstance(value, str) and "@" in value and len(value) <= MAX_ADDRESS_LENGTH


def _address(
    address: Any,
    where: str,
    *,
    email_field: str | None = None,
    message: str = "Does not contain a valid address.",
) -> Problem | None:
    if not isinstance(address, dict) or not _is_email(address.get("email")):
        return message, email_field or where
    if "name" in address:
        return _wrong_type(address["name"], "string", f"{where}.name")
    return None


def _recipients(item: dict[str, Any], where: str, seen: set[str]) -> Problem | None:
    """to/cc/bcc addresses; `seen` collects them across the request: a repeat is a 400."""
    for kind in ("to", "cc", "bcc"):
        for address in item.get(kind, []):
            if problem := _address(address, f"{where}.{kind}"):
                return problem
            email = address["email"].lower()
            if email in seen:
                return (
                    "Each email address in the personalization block should be unique "
                    "between to, cc, and bcc.",
                    f"{where}.{kind}",
                )
            seen.add(email)
    return None


def _custom_args_size(args: dict[str, str]) -> int:
    # UTF-8 bytes: SendGrid counts 'é' as 2 bytes, not as the 6 of a \u00e9 escape.
    text = json.dumps(args, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8", "surrogatepass"))


def _custom_args(message_args: dict[str, Any], args: dict[str, Any], where: str) -> Problem | None:
    field_name = f"{where}.custom_args"
    if any(not isinstance(value, str) for value in args.values()):
        return "Custom args values must be strings.", field_name
    # Personalization keys override message-level ones; the limit applies to the merge.
    if _custom_args_size({**message_args, **args}) >= MAX_CUSTOM_ARGS_BYTES:
        return "Custom args must be less than 10000 bytes.", field_name
    return None


def _personalization(
    item: Any, where: str, seen: set[str], message_args: dict[str, Any]
) -> Problem | None:
    if not isinstance(item, dict):
        return _wrong_type(item, "object", where)
    if problem := _field_types(item, PERSONALIZATION_FIELDS, f"{where}."):
        return problem
    if not item.get("to"):
        return "The to parameter is required for all personalization objects.", f"{where}.to"
    if "subject" in item and not item["subject"]:
        return "The subject must be at least one character long.", f"{where}.subject"
    if problem := _recipients(item, where, seen):
        return problem
    if "from" in item and (problem := _address(item["from"], f"{where}.from")):
        return problem
    if problem := _substitutions(item.get("substitutions", {}), where):
        return problem
    return _custom_args(message_args, item.get("custom_args", {}), where)


def _substitutions(substitutions: dict[str, Any], where: str) -> Problem | None:
    field_name = f"{where}.substitutions"
    if any(not isinstance(value, str) for value in substitutions.values()):
        return "Substitutions values must be strings.", field_name
    if len(substitutions) > MAX_SUBSTITUTIONS:
        return "Substitutions may have at most 10000 properties.", field_name
    size = sum(
        len(key.encode("utf-8", "surrogatepass")) + len(value.encode("utf-8", "surrogatepass"))
        for key, value in substitutions.items()
    )
    if size > MAX_SUBSTITUTIONS_BYTES:
        return "The total size of substitutions may not exceed 10000 bytes.", field_name
    return None


def _personalizations(body: dict[str, Any]) -> Problem | None:
    items = body.get("personalizations")
    if not items:
        return "You must have at least one personalization.", "personalizations"
    if len(items) > MAX_RECIPIENTS:
        return "The personalizations field must have at most 1000 items.", "personalizations"
    message_args = body.get("custom_args", {})
    if any(not isinstance(value, str) for value in message_args.values()):
        return "Custom args values must be strings.", "custom_args"
    seen: set[str] = set()
    for index, item in enumerate(items):
        if problem := _personalization(item, f"personalizations.{index}", seen, message_args):
            return problem
    if len(seen) > MAX_RECIPIENTS:
        return "The total number of recipients must be no more than 1000.", "personalizations"
    return None


def _sender(body: dict[str, Any]) -> Problem | None:
    return _address(
        body.get("from"),
        "from",
        email_field="from.email",
        message="The from object must be provided for every email send.",
    )


def _reply_to(body: dict[str, Any]) -> Problem | None:
    if "reply_to" in body and "reply_to_list" in body:
        return (
            "You can use either the reply_to property or reply_to_list property but not both.",
            "reply_to_list",
        )
    if "reply_to" in body:
        return _address(body["reply_to"], "reply_to")
    addresses = body.get("reply_to_list", [])
    if len(addresses) > MAX_RECIPIENTS:
        return "The reply_to_list must have at most 1000 items.", "reply_to_list"
    seen: set[str] = set()
    for index, address in enumerate(addresses):
        if problem := _address(address, f"reply_to_list.{index}"):
            return problem
        if address["email"].lower() in seen:
            return "The reply_to_list addresses must be unique.", f"reply_to_list.{index}"
        seen.add(address["email"].lower())
    return None


def _subject(body: dict[str, Any]) -> Problem | None:
    if "subject" in body and not body["subject"]:
        return "The subject must be at least one character long.", "subject"
    if "template_id" in body or body.get("subject"):
        return None
    if all(item.get("subject") for item in body["personalizations"]):
        return None
    return (
        "The subject is required. You can get around this requirement if you use a template "
        "with a subject defined or if every personalization has a subject defined.",
        "subject",
    )


def _content_part(part: Any, where: str) -> Problem | None:
    if not isinstance(part, dict):
        return _wrong_type(part, "object", where)
    for name in ("type", "value"):
        if not isinstance(part.get(name), str) or not part[name]:
            return (
                f"The content {name} must be a string at least one character in length.",
                f"{where}.{name}",
            )
    return None


def _content(body: dict[str, Any]) -> Problem | None:
    content = body.get("content", [])
    if not content and "template_id" not in body:
        return "Unless a valid template_id is provided, the content parameter is required.", (
            "content"
        )
    for index, part in enumerate(content):
        if problem := _content_part(part, f"content.{index}"):
            return problem
    types = [part["type"] for part in content]
    if types.count("text/plain") > 1 or types.count("text/html") > 1:
        return "If present, text/plain and text/html may only be provided once.", "content"
    expected = [kind for kind in CONTENT_ORDER if kind in types]
    for index, (kind, wanted) in enumerate(zip(types, expected, strict=False)):
        if kind != wanted:
            return (
                "If present, text/plain content must be first, followed by text/html, "
                "followed by any other content.",
                f"content.{index}.type",
            )
    return None


def _categories(body: dict[str, Any]) -> Problem | None:
    categories = body.get("categories", [])
    for category in categories:
        if not isinstance(category, str) or not category or not category.isascii():
            return "Category names must be non-empty ASCII strings.", "categories"
        if len(category) > MAX_CATEGORY_LENGTH:
            return "Category names must be at most 255 characters.", "categories"
    if len(categories) > MAX_CATEGORIES:
        return "Too many categories: at most 10 may be used.", "categories"
    if len(set(categories)) != len(categories):
        return "Categories must be unique.", "categories"
    return None


def _settings(body: dict[str, Any]) -> Problem | None:
    """mail_settings / tracking_settings hold objects whose `enable` (and click tracking's
    `enable_text`) are booleans."""
    for group in ("mail_settings", "tracking_settings"):
        for name, setting in body.get(group, {}).items():
            where = f"{group}.{name}"
            if problem := _wrong_type(setting, "object", where):
                return problem
            for flag in ("enable", "enable_text"):
                if flag in setting and (
                    problem := _wrong_type(setting[flag], "boolean", f"{where}.{flag}")
                ):
                    return problem
    return None


def _asm(body: dict[str, Any]) -> Problem | None:
    if "asm" not in body:
        return None
    asm = body["asm"]
    if problem := _wrong_type(asm.get("group_id"), "integer", "asm.group_id"):
        return problem
    groups = asm.get("groups_to_display", [])
    if problem := _wrong_type(groups, "array", "asm.groups_to_display"):
        return problem
    if len(groups) > MAX_GROUPS_TO_DISPLAY or any(_json_type(g) != "integer" for g in groups):
        return "groups_to_display must be at most 25 group ids.", "asm.groups_to_display"
    return None


def _message_types(body: dict[str, Any]) -> Problem | None:
    return _field_types(body, MESSAGE_FIELDS, "")


# In order; each check may rely on the types that the checks before it verified.
CHECKS: tuple[Callable[[dict[str, Any]], Problem | None], ...] = (
    _message_types,
    _personalizations,
    _sender,
    _reply_to,
    _content,
    _subject,
    _categories,
    _settings,
    _asm,
)


def validate(body: Any) -> Problem | None:
    """SendGrid's documented mail/send rules; returns (message, field) of the first problem.

    Types are checked before any value is used, so that no body can crash the sink (a 500
    would make our transport retry a request that can never succeed)."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object.", None
    for check in CHECKS:
        if problem := check(body):
            return problem
    return None
