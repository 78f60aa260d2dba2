"""What Envoy answers itself, before a request reaches the gateway: headers gRPC cannot
carry, URLs that are not UTF-8, URLs and headers that are too large; and the OpenAPI
document it serves. Every answer is the documented JSON error shape with an ErrorInfo."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tools.devstack import ROOT, Stack

pytestmark = pytest.mark.postgres

JWKS = "/.well-known/jwks.json"


def _error(response: httpx.Response, status: int, code: int, reason: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details"}, body
    assert body["code"] == code, body
    assert body["message"], body
    (detail,) = body["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert detail["domain"] == "nexus.dev"
    assert detail["reason"] == reason, body
    metadata: dict[str, Any] = detail["metadata"]
    assert all(isinstance(value, str) for value in metadata.values()), body
    return body


def _admin(stack: Stack) -> dict[str, str]:
    return {"X-API-Key": stack.admin_key}


@pytest.mark.parametrize("path", [JWKS, "/v1/providers", "/admin/v1/agents"])
def test_a_header_name_grpc_forbids_is_400_on_every_route(
    rest: httpx.Client, stack: Stack, path: str
) -> None:
    response = rest.get(path, headers={**_admin(stack), "X-Foo!": "x"})
    body = _error(response, 400, 3, "HEADER_NOT_ALLOWED")
    assert body["details"][0]["metadata"] == {"header": "x-foo!"}
    assert "x-foo!" in body["message"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("grpc-timeout", "bogus"),  # reserved for gRPC: the gateway failed it with 500
        ("x-trace-bin", "not base64!"),  # gRPC decodes -bin values as base64
        ("content-type", b"application/\xff"),  # lands in a proto string field
    ],
)
def test_a_header_grpc_cannot_carry_is_400(
    rest: httpx.Client, stack: Stack, name: str, value: str | bytes
) -> None:
    response = rest.post(
        "/v1/providers", headers={**_admin(stack), name: value}, content=b'{"name": "x"}'
    )
    body = _error(response, 400, 3, "HEADER_NOT_ALLOWED")
    assert body["details"][0]["metadata"] == {"header": name}


def test_headers_grpc_can_carry_still_pass(rest: httpx.Client, stack: Stack) -> None:
    headers = {"x-trace-bin": "YWJj", "x-request-note": "café ☕".encode()}
    assert rest.get(JWKS, headers=headers).status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "/v1/providers/%FF",
        "/v1/providers/%C0%AF",  # an overlong '/'
        "/v1/providers/%ED%A0%80",  # a UTF-16 surrogate
        "/v1/providers?page_token=%FF",
        "/v1/check-connection/%F5%80%80%80",  # above U+10FFFF
    ],
)
def test_a_url_that_is_not_utf8_is_400_without_internal_names(
    rest: httpx.Client, stack: Stack, url: str
) -> None:
    response = rest.get(url, headers=_admin(stack))
    body = _error(response, 400, 3, "MALFORMED_URL")
    assert "nexus." not in body["message"] and "proto" not in body["message"]


def test_utf8_in_a_url_still_reaches_the_service(rest: httpx.Client, stack: Stack) -> None:
    response = rest.get("/v1/providers/%C3%A9t%C3%A9", headers=_admin(stack))
    _error(response, 404, 5, "PROVIDER_NOT_FOUND")


def test_a_url_over_8_kib_is_always_413(rest: httpx.Client, stack: Stack) -> None:
    # Before, such URLs reached gRPC's metadata limit, where calls fail at random with 429.
    url = f"{JWKS}?{'a' * 9000}"
    for _ in range(20):
        body = _error(rest.get(url), 413, 8, "REQUEST_TOO_LARGE")
        assert "8192" in body["message"]


def test_a_url_just_under_the_limit_and_large_headers_always_reach_the_gateway(
    rest: httpx.Client, stack: Stack
) -> None:
    """gRPC's default metadata limits (8 KiB soft, 16 KiB hard) sit below what Envoy lets
    through; the gateway's must not."""
    url = "/v1/providers?category=" + "a" * (8192 - len("/v1/providers?category="))
    headers = {**_admin(stack), "X-Padding": "p" * 24_000}
    for _ in range(20):
        assert rest.get(JWKS, headers=headers).status_code == 200
        response = rest.get(url, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["providers"] == []


def test_headers_over_32_kib_are_refused_in_the_json_shape(rest: httpx.Client) -> None:
    response = rest.get(JWKS, headers={"X-Padding": "p" * 40_000})
    _error(response, 431, 8, "REQUEST_TOO_LARGE")


def test_envoy_serves_the_committed_openapi_document(rest: httpx.Client) -> None:
    response = rest.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "max-age" in response.headers["cache-control"]
    assert response.content == (ROOT / "envoy" / "openapi.json").read_bytes()
    assert response.json()["openapi"] == "3.1.0"
