"""Derive the OpenAPI 3.1 document of the REST surface from the protos.

`make protos` runs this (through tools/genprotos.py) on a descriptor set built with
source info; `make check-protos` and tests/unit/test_openapi.py fail when the committed
envoy/openapi.json differs. Envoy serves that file at GET /openapi.json.

What it reads:

* the services Envoy transcodes (the transcoder's ``services`` in envoy/envoy.yaml) and
  their ``google.api.http`` bindings: paths, path parameters, and every other scalar
  field of the request as a query parameter, as the transcoder maps them;
* REST bodies as the gateway really parses them (services/gateway/nexus_gateway/rest_body.py):
  a method whose binding takes ``http_body`` receives the JSON of the request's other
  message field (``provider``, ``session``...), strictly, so that message is the body;
* ``google.api.field_behavior``: REQUIRED (``required`` in request bodies; not in PATCH
  bodies, which change only what they name), OUTPUT_ONLY (``readOnly``), INPUT_ONLY
  (``writeOnly``), IMMUTABLE (said in the description);
* who may call what, from the gateway's own tables (nexus_gateway.auth).

The output is deterministic: the same protos give the same bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
ENVOY_CONFIG = ROOT / "envoy" / "envoy.yaml"

__all__ = ["document", "render"]

Schema = dict[str, Any]
FieldProto = descriptor_pb2.FieldDescriptorProto

_HTTP_BODY = "google.api.HttpBody"
_EMPTY = "google.protobuf.Empty"
_TRANSCODER = "envoy.filters.http.grpc_json_transcoder"
# Methods whose REST answer is an HttpBody: what that body is. Every such method must be here.
_HTTP_BODY_RESPONSES: Mapping[str, tuple[str, Schema]] = {
    "nexus.gateway.v1.SessionService.GetJwks": (
        "application/jwk-set+json",
        {
            "description": "A JWK Set (RFC 7517) with the public keys that verify session tokens.",
            "type": "object",
            "required": ["keys"],
            "properties": {
                "keys": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["kty", "kid"],
                        "properties": {
                            "kty": {"type": "string"},
                            "kid": {"type": "string"},
                            "alg": {"type": "string"},
                            "use": {"type": "string"},
                        },
                    },
                }
            },
        },
    ),
}

_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}
_INT64_TEXT = "64-bit integers are JSON strings in answers; requests may send a number or a string"
_FLOAT = {
    "description": "A number, or one of the strings NaN, Infinity and -Infinity.",
    "type": ["number", "string"],
    "pattern": "^(NaN|-?Infinity)$",
}
_SCALARS: Mapping[int, Schema] = {
    FieldProto.TYPE_STRING: {"type": "string"},
    FieldProto.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldProto.TYPE_BOOL: {"type": "boolean"},
    FieldProto.TYPE_INT32: _INT32,
    FieldProto.TYPE_SINT32: _INT32,
    FieldProto.TYPE_SFIXED32: _INT32,
    FieldProto.TYPE_UINT32: _UINT32,
    FieldProto.TYPE_FIXED32: _UINT32,
    FieldProto.TYPE_DOUBLE: _FLOAT,
    FieldProto.TYPE_FLOAT: _FLOAT,
}
_INT64_TYPES = {
    FieldProto.TYPE_INT64: "^-?[0-9]+$",
    FieldProto.TYPE_SINT64: "^-?[0-9]+$",
    FieldProto.TYPE_SFIXED64: "^-?[0-9]+$",
    FieldProto.TYPE_UINT64: "^[0-9]+$",
    FieldProto.TYPE_FIXED64: "^[0-9]+$",
}
_WELL_KNOWN: Mapping[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Field paths separated by commas, e.g. `display_name,scopes`.",
    },
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.Int32Value": _INT32,
    "google.protobuf.UInt32Value": _UINT32,
    "google.protobuf.DoubleValue": _FLOAT,
    "google.protobuf.FloatValue": _FLOAT,
}

_ERROR_SCHEMAS: dict[str, Schema] = {
    "google.rpc.Status": {
        "description": (
            "Every error, from the services or from Envoy itself: a google.rpc.Status with "
            "exactly one google.rpc.ErrorInfo, whose reason is stable (see the README's Errors)."
        ),
        "type": "object",
        "required": ["code", "message", "details"],
        "additionalProperties": False,
        "properties": {
            "code": {"type": "integer", "minimum": 1, "maximum": 16, "description": "gRPC code"},
            "message": {"type": "string", "description": "For a person; never holds a secret."},
            "details": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {"$ref": "#/components/schemas/google.rpc.ErrorInfo"},
            },
        },
    },
    "google.rpc.ErrorInfo": {
        "type": "object",
        "required": ["@type", "reason", "domain", "metadata"],
        "additionalProperties": False,
        "properties": {
            "@type": {"const": "type.googleapis.com/google.rpc.ErrorInfo"},
            "reason": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
            "domain": {"const": "nexus.dev"},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
}

_DESCRIPTION = """\
The REST surface of Nexus, served by Envoy, which transcodes it to the gateway's gRPC API.
Generated from protos/ by tools/genopenapi.py; do not edit.

JSON follows the proto3 JSON mapping:

* Answers use the proto field names (`client_id`), print every scalar field even when it
  has its default value, and leave out unset messages and unset `optional` fields.
* Request bodies are parsed strictly by the gateway: an unknown field, malformed JSON or a
  value of the wrong type is `400` with an `ErrorInfo` reason (`UNKNOWN_FIELD`,
  `MALFORMED_JSON`, `VALIDATION_FAILED`). Field names may also be written in lowerCamelCase.
  A body is read as JSON whatever `Content-Type` is declared.
* 64-bit integers are strings in answers (`"1234"`); requests may send a number or a string.
* Timestamps are RFC 3339 strings, durations strings such as `"30s"`, field masks
  comma-separated field paths, enums their value names.
* `readOnly` fields are set by Nexus (sending them changes nothing); `writeOnly` ones, such
  as secrets, are never returned.

Credentials: an admin key in `X-API-Key`, or for the methods an agent may call, the agent's
key as `Authorization: Bearer <agent key>`.

Every error, including those Envoy answers itself (an unknown path, a body over 1 MiB, a
URL over 8 KiB, a header gRPC cannot carry, a URL that is not UTF-8 once percent-decoded),
is a `google.rpc.Status` in JSON with exactly one `google.rpc.ErrorInfo`.
"""


class _Protos:
    """Messages, enums and comments of a descriptor set, by full name."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}
        self.comments: dict[str, str] = {}
        for file in files.file:
            locations = {
                tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location
            }
            prefix = f"{file.package}." if file.package else ""
            for index, message in enumerate(file.message_type):
                self._message(prefix + message.name, message, (4, index), locations)
            for enum in file.enum_type:
                self.enums[prefix + enum.name] = enum
            for index, service in enumerate(file.service):
                name = prefix + service.name
                self.services[name] = service
                self._comment(name, locations, (6, index))
                for m_index, method in enumerate(service.method):
                    self._comment(f"{name}.{method.name}", locations, (6, index, 2, m_index))

    def _comment(self, name: str, locations: Mapping[tuple[int, ...], str], path: Any) -> None:
        text = " ".join(line.strip() for line in locations.get(tuple(path), "").splitlines())
        if text.strip():
            self.comments[name] = text.strip()

    def _message(
        self,
        name: str,
        message: descriptor_pb2.DescriptorProto,
        path: tuple[int, ...],
        locations: Mapping[tuple[int, ...], str],
    ) -> None:
        self.messages[name] = message
        self._comment(name, locations, path)
        for index, field in enumerate(message.field):
            self._comment(f"{name}.{field.name}", locations, (*path, 2, index))
        for index, nested in enumerate(message.nested_type):
            self._message(f"{name}.{nested.name}", nested, (*path, 3, index), locations)
        for enum in message.enum_type:
            self.enums[f"{name}.{enum.name}"] = enum


def _behaviours(field: FieldProto) -> set[int]:
    return set(field.options.Extensions[field_behavior_pb2.field_behavior])


def _type_name(field: FieldProto) -> str:
    return field.type_name.lstrip(".")


class _Builder:
    def __init__(self, protos: _Protos) -> None:
        self.protos = protos
        self.schemas: dict[str, Schema] = {}

    # --- schemas ---------------------------------------------------------------------------

    def ref(self, name: str, mode: str) -> Schema:
        """A reference to message ``name`` as answered (``output``), as sent (``input``), or
        as sent in a PATCH (``patch``: nothing required). The suffix has a character no
        proto name has, so the names never collide."""
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name == _EMPTY:
            return {"type": "object", "additionalProperties": False}
        key = name if mode == "output" else f"{name}-{mode}"
        if key not in self.schemas:
            self.schemas[key] = {}  # placeholder: recursive messages refer to themselves
            self.schemas[key] = self.message(name, mode)
        return {"$ref": f"#/components/schemas/{key}"}

    def message(self, name: str, mode: str, *, skip: Iterable[str] = ()) -> Schema:
        message = self.protos.messages[name]
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in message.field:
            if field.name in skip:
                continue
            behaviours = _behaviours(field)
            schema = self.field(field, "input" if mode == "patch" else mode)
            notes = [self.protos.comments.get(f"{name}.{field.name}", "")]
            if field_behavior_pb2.OUTPUT_ONLY in behaviours:
                schema["readOnly"] = True
            if field_behavior_pb2.INPUT_ONLY in behaviours:
                schema["writeOnly"] = True
            if field_behavior_pb2.IMMUTABLE in behaviours:
                notes.append("Immutable: set when created, never changed.")
            description = " ".join(note for note in notes if note)
            if description:
                schema = {"description": description, **schema}
            properties[field.name] = schema
            if (
                mode == "input"
                and field_behavior_pb2.REQUIRED in behaviours
                and field_behavior_pb2.OUTPUT_ONLY not in behaviours
            ):
                required.append(field.name)
        result: Schema = {"type": "object"}
        if name in self.protos.comments:
            result["description"] = self.protos.comments[name]
        result["properties"] = properties
        if required:
            result["required"] = required
        result["additionalProperties"] = False
        return result

    def field(self, field: FieldProto, mode: str) -> Schema:
        if field.type == FieldProto.TYPE_MESSAGE:
            entry = self.protos.messages.get(_type_name(field))
            if entry is not None and entry.options.map_entry:
                _key, value = entry.field
                return {"type": "object", "additionalProperties": self.single(value, mode)}
        single = self.single(field, mode)
        if field.label == FieldProto.LABEL_REPEATED:
            return {"type": "array", "items": single}
        return single

    def single(self, field: FieldProto, mode: str) -> Schema:
        if field.type == FieldProto.TYPE_MESSAGE:
            return self.ref(_type_name(field), mode)
        if field.type == FieldProto.TYPE_ENUM:
            enum = self.protos.enums[_type_name(field)]
            return {"type": "string", "enum": [value.name for value in enum.value]}
        if field.type in _INT64_TYPES:
            pattern = _INT64_TYPES[field.type]
            if mode == "output":
                return {"type": "string", "pattern": pattern, "description": _INT64_TEXT}
            return {"type": ["string", "integer"], "pattern": pattern}
        return dict(_SCALARS[field.type])

    # --- operations ------------------------------------------------------------------------

    def query_parameters(
        self, message_name: str, skip: set[str], prefix: str = "", depth: int = 0
    ) -> list[Schema]:
        """Every scalar the transcoder reads from the query string: fields of the request
        not bound elsewhere, nested messages as dotted names."""
        parameters: list[Schema] = []
        for field in self.protos.messages[message_name].field:
            if field.name in skip:
                continue
            name = f"{prefix}{field.name}"
            nested = field.type == FieldProto.TYPE_MESSAGE and _type_name(field) not in _WELL_KNOWN
            if nested:
                if depth < 2 and field.label != FieldProto.LABEL_REPEATED:
                    parameters += self.query_parameters(
                        _type_name(field), set(), f"{name}.", depth + 1
                    )
                continue
            behaviours = _behaviours(field)
            parameter: Schema = {"name": name, "in": "query"}
            comment = self.protos.comments.get(f"{message_name}.{field.name}")
            if comment:
                parameter["description"] = comment
            if field_behavior_pb2.REQUIRED in behaviours and not prefix:
                parameter["required"] = True
            parameter["schema"] = self.field(field, "input")
            if field.label == FieldProto.LABEL_REPEATED:
                parameter["explode"] = True
            parameters.append(parameter)
        return parameters

    def body_field(self, request: str) -> FieldProto:
        """The message field the gateway parses a REST ``http_body`` into."""
        candidates = [
            field
            for field in self.protos.messages[request].field
            if field.type == FieldProto.TYPE_MESSAGE
            and _type_name(field) not in (_HTTP_BODY, *_WELL_KNOWN)
        ]
        if len(candidates) != 1:
            raise ValueError(f"{request}: expected one message field beside http_body")
        return candidates[0]

    def operation(
        self,
        service: str,
        method: descriptor_pb2.MethodDescriptorProto,
        verb: str,
        path: str,
        body: str,
        security: list[dict[str, list[str]]],
    ) -> Schema:
        full_name = f"{service}.{method.name}"
        request, response = method.input_type.lstrip("."), method.output_type.lstrip(".")
        path_fields = re.findall(r"\{([^}=]+)\}", path)
        if re.search(r"\{[^}]*=", path):
            raise ValueError(f"{full_name}: path templates with patterns are not supported")
        operation: Schema = {
            "operationId": f"{service.rsplit('.', 1)[1]}_{method.name}",
            "tags": [service.rsplit(".", 1)[1]],
        }
        if full_name in self.protos.comments:
            operation["description"] = self.protos.comments[full_name]
        parameters: list[Schema] = []
        fields = {field.name: field for field in self.protos.messages[request].field}
        for name in path_fields:
            parameters.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": self.field(fields[name], "input"),
                }
            )
        skip = set(path_fields)
        if body == "http_body":
            typed = self.body_field(request)
            skip |= {"http_body", typed.name}
            body_message = _type_name(typed)
            mode = "patch" if verb == "patch" else "input"
            schema = self.message(body_message, mode, skip=())
            # A field the path already gives is not needed in the body too.
            if "required" in schema:
                schema["required"] = [f for f in schema["required"] if f not in path_fields]
                if not schema["required"]:
                    del schema["required"]
            key = f"{body_message}-{mode}" + "".join(f"-{f}" for f in path_fields)
            self.schemas.setdefault(key, schema)
            operation["requestBody"] = {
                "required": verb == "patch" or "required" in schema,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{key}"}}
                },
            }
        elif body:
            raise ValueError(f"{full_name}: only body: http_body is supported, not {body!r}")
        parameters += self.query_parameters(request, skip)
        if parameters:
            operation["parameters"] = parameters
        operation["security"] = security
        operation["responses"] = {
            "200": self.success(full_name, response),
            "default": {
                "description": "An error (see the README's Errors for every reason).",
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/google.rpc.Status"}
                    }
                },
            },
        }
        return operation

    def success(self, full_name: str, response: str) -> Schema:
        if response == _HTTP_BODY:
            if full_name not in _HTTP_BODY_RESPONSES:
                raise ValueError(f"{full_name} answers an HttpBody: describe it in genopenapi")
            content_type, schema = _HTTP_BODY_RESPONSES[full_name]
        else:
            content_type, schema = "application/json", self.ref(response, "output")
        return {"description": "OK", "content": {content_type: {"schema": schema}}}


def _transcoded_services(envoy_config: str) -> list[str]:
    config = yaml.safe_load(envoy_config)
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                for http_filter in network_filter["typed_config"].get("http_filters", []):
                    if http_filter["name"] == _TRANSCODER:
                        return list(http_filter["typed_config"]["services"])
    raise ValueError("envoy/envoy.yaml has no gRPC-JSON transcoder")


def _security(method_path: str) -> list[dict[str, list[str]]]:
    from nexus_gateway.auth import AGENT_METHODS, PUBLIC_METHODS

    if method_path in PUBLIC_METHODS:
        return []
    if method_path in AGENT_METHODS:
        return [{"AdminKey": []}, {"AgentKey": []}]
    return [{"AdminKey": []}]


def _bindings(rule: http_pb2.HttpRule) -> list[tuple[str, str, str]]:
    found = []
    for binding in (rule, *rule.additional_bindings):
        verb = binding.WhichOneof("pattern")
        if verb == "custom":
            raise ValueError("custom HTTP verbs are not supported")
        if verb:
            found.append((verb, getattr(binding, verb), binding.body))
    return found


def document(files: descriptor_pb2.FileDescriptorSet, envoy_config: str) -> dict[str, Any]:
    protos = _Protos(files)
    builder = _Builder(protos)
    paths: dict[str, dict[str, Any]] = {}
    for service_name in _transcoded_services(envoy_config):
        for method in protos.services[service_name].method:
            rule = method.options.Extensions[annotations_pb2.http]
            security = _security(f"/{service_name}/{method.name}")
            for verb, path, body in _bindings(rule):
                operation = builder.operation(service_name, method, verb, path, body, security)
                paths.setdefault(path, {})[verb] = operation
    schemas = {**_ERROR_SCHEMAS, **dict(sorted(builder.schemas.items()))}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Nexus REST API", "version": "v1", "description": _DESCRIPTION},
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "AdminKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "AgentKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An agent's key: `Authorization: Bearer <agent key>`.",
                },
            },
        },
    }


def render(descriptor_set: bytes, envoy_config: str | None = None) -> str:
    """The document as committed in envoy/openapi.json."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    config = ENVOY_CONFIG.read_text() if envoy_config is None else envoy_config
    return json.dumps(document(files, config), indent=2, ensure_ascii=False) + "\n"
