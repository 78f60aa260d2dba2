from __future__ import annotations

import pytest
from nexus_common import (
    API_KEY_HEADER,
    CALLER_HEADER,
    INTERNAL_TOKEN_HEADER,
    ApiKeySet,
    Caller,
    Unauthenticated,
    admin_authenticator,
    internal_authenticator,
)


def test_a_matching_key_names_its_owner() -> None:
    keys = ApiKeySet.from_spec("ops:alpha-key,ci:beta-key")
    assert keys.match("beta-key") == "ci"
    assert ApiKeySet.from_spec("bare-key").match("bare-key") == "key1"


@pytest.mark.parametrize("presented", [None, "", "alpha-ke", "alpha-key ", "ALPHA-KEY"])
def test_missing_and_wrong_keys_get_the_same_error(presented: str | None) -> None:
    with pytest.raises(Unauthenticated) as caught:
        ApiKeySet.from_spec("ops:alpha-key").match(presented)
    assert caught.value.message == "a valid API key is required"
    assert "alpha" not in str(caught.value)


async def test_admin_callers_are_named_by_their_key() -> None:
    authenticate = admin_authenticator(ApiKeySet.from_spec("ops:alpha-key"))
    assert await authenticate("/m", {API_KEY_HEADER: "alpha-key"}) == Caller("admin", "ops")


async def test_internal_calls_carry_the_gateway_caller_only_with_the_token() -> None:
    authenticate = internal_authenticator(ApiKeySet({"internal": "tok"}))
    on_behalf = {INTERNAL_TOKEN_HEADER: "tok", CALLER_HEADER: "admin:ops"}
    assert await authenticate("/m", on_behalf) == Caller("admin", "ops")
    assert await authenticate("/m", {INTERNAL_TOKEN_HEADER: "tok"}) == Caller("service", "internal")
    with pytest.raises(Unauthenticated):
        await authenticate("/m", {CALLER_HEADER: "admin:ops"})
