"""The committed OpenAPI document (envoy/openapi.json) is what the protos give, and it
describes the REST bodies as the gateway parses them, not as opaque HttpBody."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2

from tools import genopenapi, genprotos
from tools.devstack import ROOT

COMMITTED = ROOT / "envoy" / "openapi.json"


@pytest.fixture(scope="module")
def described(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The descriptor set, with comments, that `make protos` builds the document from."""
    out = tmp_path_factory.mktemp("protos") / "described.pb"
    genprotos.described_descriptor_set(genprotos.proto_sources(), out)
    return out.read_bytes()


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(COMMITTED.read_text())
    return loaded


def _schema(document: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    name = reference["$ref"].rsplit("/", 1)[1]
    found: dict[str, Any] = document["components"]["schemas"][name]
    return found


def _body(document: dict[str, Any], path: str, verb: str) -> dict[str, Any]:
    content = document["paths"][path][verb]["requestBody"]["content"]
    return _schema(document, content["application/json"]["schema"])


def test_the_committed_document_is_what_the_protos_give(described: bytes) -> None:
    assert genopenapi.render(described) == COMMITTED.read_text(), (
        "envoy/openapi.json is stale: run make protos"
    )


def test_a_changed_field_behaviour_changes_the_document(described: bytes) -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(described)
    (agents,) = (f for f in files.file if f.name == "nexus/policy/v1/agents.proto")
    (agent,) = (m for m in agents.message_type if m.name == "Agent")
    (key_id,) = (f for f in agent.field if f.name == "key_id")
    del key_id.options.Extensions[field_behavior_pb2.field_behavior][:]
    key_id.options.Extensions[field_behavior_pb2.field_behavior].append(field_behavior_pb2.REQUIRED)
    changed = json.loads(genopenapi.render(files.SerializeToString()))
    body = _body(changed, "/admin/v1/agents", "post")
    assert "key_id" in body["required"]
    assert "readOnly" not in body["properties"]["key_id"]


def test_every_transcoded_method_is_an_operation(document: dict[str, Any]) -> None:
    from nexus.gateway.v1 import gateway_pb2

    operations = {
        operation["operationId"]
        for methods in document["paths"].values()
        for operation in methods.values()
    }
    expected = {
        f"{service.name}_{method.name}"
        for service in gateway_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert operations == expected


def test_bodies_are_the_strict_messages_the_gateway_parses(document: dict[str, Any]) -> None:
    created = _body(document, "/v1/providers", "post")
    assert created["additionalProperties"] is False
    assert {"name", "auth_type"} <= set(created["required"])
    assert created["properties"]["create_time"]["readOnly"] is True
    assert created["properties"]["client_secret"]["writeOnly"] is True
    assert "http_body" not in json.dumps(document["paths"])
    # PATCH changes only what it names; the path gives the id.
    patched = _body(document, "/v1/providers/{id}", "patch")
    assert "required" not in patched
    rotate = document["paths"]["/admin/v1/agents/{agent_id}:rotateKey"]["post"]
    assert rotate["requestBody"]["required"] is False
    update_mask = {
        p["name"]: p for p in document["paths"]["/v1/providers/{id}"]["patch"]["parameters"]
    }
    assert update_mask["update_mask"]["in"] == "query"


def test_answers_follow_the_proto3_json_mapping(document: dict[str, Any]) -> None:
    provider = document["components"]["schemas"]["nexus.broker.v1.Provider"]
    assert provider["properties"]["create_time"]["format"] == "date-time"
    assert provider["additionalProperties"] is False
    listed = document["paths"]["/v1/connections"]["get"]
    workspace = next(p for p in listed["parameters"] if p["name"] == "workspace_id")
    assert workspace["required"] is True


def test_security_and_errors_are_described(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["AdminKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["AgentKey"]["scheme"] == "bearer"
    paths = document["paths"]
    assert paths["/.well-known/jwks.json"]["get"]["security"] == []
    assert paths["/v1/token/{connection_id}"]["get"]["security"] == [
        {"AdminKey": []},
        {"AgentKey": []},
    ]
    assert paths["/v1/providers"]["post"]["security"] == [{"AdminKey": []}]
    for methods in paths.values():
        for operation in methods.values():
            error = operation["responses"]["default"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/google.rpc.Status"}


def test_every_schema_is_valid_json_schema(document: dict[str, Any]) -> None:
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_the_error_shape_matches_what_envoy_and_the_services_answer(
    document: dict[str, Any],
) -> None:
    schemas = document["components"]["schemas"]
    status = json.loads(
        json.dumps(schemas["google.rpc.Status"]).replace(
            '{"$ref": "#/components/schemas/google.rpc.ErrorInfo"}',
            json.dumps(schemas["google.rpc.ErrorInfo"]),
        )
    )
    error = {
        "code": 3,
        "message": "unknown field: bogus",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "UNKNOWN_FIELD",
                "domain": "nexus.dev",
                "metadata": {"field": "bogus"},
            }
        ],
    }
    jsonschema.validate(error, status)
    # An error without its ErrorInfo, as the gateway answered undecodable requests, breaks it.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**error, "details": []}, status)
