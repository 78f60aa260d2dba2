"""Strict parsing of REST JSON bodies into request messages.

Envoy hands bodies over raw (``google.api.HttpBody``) because its transcoder
drops unknown fields silently. Here an unknown field, malformed JSON or a
wrongly typed value is an error that names the field. Values are never
quoted back: a misplaced value may be a secret.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from google.api import httpbody_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from nexus_common import InvalidArgument, MalformedJson, UnknownField, ValidationFailed

__all__ = ["parse_json_body", "request_body"]

M = TypeVar("M", bound=Message)

_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field")
# Deeper than any request message (a provider's params included) needs; parsing
# deeper JSON recurses past what a Python stack holds.
MAX_JSON_DEPTH = 32


def _known_names(message: Message) -> set[str]:
    names: set[str] = set()
    for field in message.DESCRIPTOR.fields:
        names.update((field.name, field.json_name))
    return names


def _depth(data: bytes) -> int:
    """An upper bound on how deeply a JSON text nests, found without parsing
    it (the parser would recurse). Brackets inside strings are skipped, so past
    the quick count the bound is exact for valid JSON; invalid JSON is refused
    either way."""
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return MAX_JSON_DEPTH  # the common case, counted in C
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def parse_json_body(body: httpbody_pb2.HttpBody, message: M) -> M:
    """Fill ``message`` from a JSON object body, whatever content type was declared
    (curl -d sends JSON as a form by default)."""
    if not body.data.strip():
        raise InvalidArgument("the request body is empty: send a JSON object", field="body")
    if _depth(body.data) > MAX_JSON_DEPTH:
        raise MalformedJson(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        document: Any = json.loads(body.data)
    except (UnicodeDecodeError, ValueError) as exc:
        position = (
            f" (line {exc.lineno}, column {exc.colno})"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise MalformedJson(f"the request body is not valid JSON{position}") from exc
    if not isinstance(document, dict):
        raise MalformedJson("the request body must be a JSON object")
    unknown = sorted(set(document) - _known_names(message))
    if unknown:
        raise UnknownField(
            f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
            field=unknown[0],
        )
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=False)
    except (json_format.ParseError, RecursionError) as exc:
        match = _FAILED_FIELD.search(str(exc))
        field = match.group(1) if match else "body"
        raise ValidationFailed(f"field {field} has a value of the wrong type", field=field) from exc
    return message


def request_body(request: Any, typed: M, *, optional: bool = False) -> M:
    """The message a caller sent: ``typed``, a field of ``request`` (gRPC
    callers), or the same message as JSON in ``request.http_body`` (REST).
    An ``optional`` body may be left out, meaning every field's default."""
    name = next(f.name for f in request.DESCRIPTOR.fields if f.message_type is typed.DESCRIPTOR)
    has_typed, has_body = request.HasField(name), request.HasField("http_body")
    if has_typed and has_body:
        raise InvalidArgument(f"set either {name} or http_body, not both")
    if has_body and (request.http_body.data.strip() or not optional):
        return parse_json_body(request.http_body, type(typed)())
    if not has_typed and not optional:
        raise InvalidArgument("the request has no body", field="body")
    return typed
