from __future__ import annotations

from collections.abc import Callable

import pytest
from nexus_common import (
    API_KEY_HEADER,
    CALLER_HEADER,
    CALLER_PROOF_HEADER,
    INTERNAL_TOKEN_HEADER,
    ApiKeySet,
    Caller,
    CallerProofInvalid,
    CallerProofs,
    ServiceIdentityRequired,
    ServiceMethodNotAllowed,
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


async def test_internal_calls_carry_the_gateway_caller_only_with_the_token_and_its_proof() -> None:
    proofs = CallerProofs("tok")
    authenticate = internal_authenticator(ApiKeySet({"internal": "tok"}), proofs)
    proof = proofs.prove(Caller("admin", "ops"), "/m")
    on_behalf = {
        INTERNAL_TOKEN_HEADER: "tok",
        CALLER_HEADER: "admin:ops",
        CALLER_PROOF_HEADER: proof,
    }
    assert await authenticate("/m", on_behalf) == Caller("admin", "ops")
    assert await authenticate("/m", {INTERNAL_TOKEN_HEADER: "tok"}) == Caller("service", "internal")
    with pytest.raises(Unauthenticated):
        await authenticate("/m", {CALLER_HEADER: "admin:ops", CALLER_PROOF_HEADER: proof})


async def test_a_bare_caller_claim_is_refused_even_with_the_internal_token() -> None:
    authenticate = internal_authenticator(ApiKeySet({"internal": "tok"}), CallerProofs("tok"))
    with pytest.raises(CallerProofInvalid):
        await authenticate("/m", {INTERNAL_TOKEN_HEADER: "tok", CALLER_HEADER: "admin:ops"})


def _proof_for(proofs: CallerProofs, caller: str, method: str) -> str:
    return proofs.prove(Caller.parse(caller), method)


@pytest.mark.parametrize(
    ("claimed", "method", "proof"),
    [
        ("admin:ops", "/m", lambda p: _proof_for(p, "admin:other", "/m")),  # another caller
        ("admin:ops", "/m", lambda p: _proof_for(p, "admin:ops", "/other")),  # another method
        ("admin:ops", "/m", lambda p: _proof_for(CallerProofs("x"), "admin:ops", "/m")),  # key
        ("admin:ops", "/m", lambda p: "not-a-proof"),
        ("admin:ops", "/m", lambda p: "9999999999.AAAA"),
        ("admin:ops", "/m", lambda p: ""),
    ],
    ids=["other-caller", "other-method", "other-key", "garbage", "far-future", "empty"],
)
def test_a_proof_holds_only_for_its_caller_method_and_key(
    claimed: str, method: str, proof: Callable[[CallerProofs], str]
) -> None:
    proofs = CallerProofs("tok")
    with pytest.raises(CallerProofInvalid):
        proofs.verify(claimed, method, proof(proofs))


def test_a_proof_expires_and_the_previous_token_still_verifies() -> None:
    now = [1000.0]
    old = CallerProofs("old", clock=lambda: now[0])
    rotated = CallerProofs("new", ["old"], clock=lambda: now[0])
    proof = old.prove(Caller("admin", "ops"), "/m")
    assert rotated.verify("admin:ops", "/m", proof) == Caller("admin", "ops")
    now[0] += 61
    with pytest.raises(CallerProofInvalid):
        rotated.verify("admin:ops", "/m", proof)


async def test_with_mutual_tls_a_call_needs_a_service_certificate_allowed_its_method() -> None:
    authenticate = internal_authenticator(
        ApiKeySet({"internal": "tok"}), CallerProofs("tok"), mutual_tls=True
    )
    token = {INTERNAL_TOKEN_HEADER: "tok"}
    end_sessions = "/nexus.broker.v1.SessionService/EndAgentSessions"
    assert await authenticate(end_sessions, token, "policy") == Caller("service", "policy")
    with pytest.raises(ServiceIdentityRequired):
        await authenticate(end_sessions, token, None)
    with pytest.raises(ServiceMethodNotAllowed):
        await authenticate(end_sessions, token, "gateway")
    with pytest.raises(Unauthenticated):
        await authenticate(end_sessions, {}, "policy")
