"""Resource-server keys at the gateway: who each credential is, method by method."""

from __future__ import annotations

from typing import Any, cast

import pytest
from nexus_common import (
    API_KEY_HEADER,
    ApiKeySet,
    Caller,
    CallerNotAllowed,
    ConfigError,
    ResourceServerPrincipal,
    Unauthenticated,
    introspector_of,
    principal_of,
)
from nexus_gateway.agent_keys import AgentKeys
from nexus_gateway.auth import GatewayAuthenticator
from nexus_gateway.settings import GatewaySettings

ADMIN_KEY = "nxa_admin_key_0123456789abcdefghijkl"
OPS_KEY = "nxrs_internal_ops_0123456789abcdefghij"
NEXT_OPS_KEY = "nxrs_internal_ops_next_0123456789abcd"
INTROSPECT = "/nexus.gateway.v1.SessionService/IntrospectSession"
GET_TOKEN = "/nexus.gateway.v1.ConnectionService/GetToken"
CREATE_PROVIDER = "/nexus.gateway.v1.ProviderService/CreateProvider"
BASE = {
    "NEXUS_INTERNAL_TOKEN": "t" * 32,
    "NEXUS_ADMIN_API_KEYS": f"ops:{ADMIN_KEY}",
    "NEXUS_ALLOW_PLAINTEXT": "true",
}


def authenticator() -> GatewayAuthenticator:
    settings = GatewaySettings.from_env(
        BASE | {"NEXUS_RESOURCE_SERVER_KEYS": f"internal-ops:{OPS_KEY},internal-ops:{NEXT_OPS_KEY}"}
    )
    # No agent key is presented below, so no agent is ever looked up.
    agents = cast(AgentKeys, None)
    return GatewayAuthenticator(settings.admin_keys, agents, settings.resource_server_keys)


@pytest.mark.parametrize(
    ("method", "key", "expected"),
    [
        (INTROSPECT, OPS_KEY, Caller("resource_server", "internal-ops")),
        (INTROSPECT, NEXT_OPS_KEY, Caller("resource_server", "internal-ops")),
        (INTROSPECT, ADMIN_KEY, Caller("admin", "ops")),
        (GET_TOKEN, ADMIN_KEY, Caller("admin", "ops")),
        (GET_TOKEN, OPS_KEY, CallerNotAllowed),
        (CREATE_PROVIDER, OPS_KEY, CallerNotAllowed),
        (INTROSPECT, OPS_KEY[:-1], Unauthenticated),
        (GET_TOKEN, OPS_KEY[:-1], Unauthenticated),
    ],
)
async def test_a_resource_server_key_is_a_caller_of_introspection_only(
    method: str, key: str, expected: Any
) -> None:
    authenticate = authenticator()
    if isinstance(expected, Caller):
        assert await authenticate(method, {API_KEY_HEADER: key}) == expected
        return
    with pytest.raises(expected):
        await authenticate(method, {API_KEY_HEADER: key})


def test_a_resource_server_is_no_principal_but_may_introspect() -> None:
    caller = Caller("resource_server", "internal-ops")
    assert introspector_of(caller) == ResourceServerPrincipal("internal-ops")
    with pytest.raises(CallerNotAllowed, match="may only introspect"):
        principal_of(caller)


def test_several_keys_may_share_a_name_while_one_rotates() -> None:
    keys = ApiKeySet([("internal-ops", OPS_KEY), ("internal-ops", NEXT_OPS_KEY)])
    assert keys.find(OPS_KEY) == keys.find(NEXT_OPS_KEY) == "internal-ops"
    assert keys.find("nope") is None


@pytest.mark.parametrize(
    "spec",
    [
        OPS_KEY,  # no provider
        "internal-ops:short-key",
        f"Internal_Ops:{OPS_KEY}",
        f":{OPS_KEY}",
    ],
)
def test_malformed_resource_server_keys_refuse_to_start(spec: str) -> None:
    with pytest.raises(ConfigError, match="NEXUS_RESOURCE_SERVER_KEYS"):
        GatewaySettings.from_env(BASE | {"NEXUS_RESOURCE_SERVER_KEYS": spec})


def test_no_resource_server_keys_unless_set() -> None:
    assert not GatewaySettings.from_env(BASE).resource_server_keys
