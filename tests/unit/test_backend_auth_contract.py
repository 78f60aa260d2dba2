"""The user backend's 200 answer, field by field (the contract in backend_auth's docstring)."""

from __future__ import annotations

import json

import pytest
from nexus_common import BackendAuthUnavailable
from nexus_policy.adapters.backend_auth import UserContext, parse_answer


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_optional_fields_default_to_empty_and_unknown_fields_are_ignored() -> None:
    answer = parse_answer(_body(user_id="u1", permissions=[], tenant_id=None, extra={"x": 1}))
    assert answer == UserContext("u1", "", "", frozenset(), None, frozenset())


def test_a_user_owns_only_the_workspaces_listed_unless_the_deployment_says_otherwise() -> None:
    body = _body(user_id="alice", permissions=[], workspaces=["team-a"])
    assert parse_answer(body).workspaces == frozenset({"team-a"})
    implicit = parse_answer(body, user_id_is_workspace=True)
    assert implicit.workspaces == frozenset({"alice", "team-a"})


def test_an_integer_clearance_level_is_kept_as_a_string() -> None:
    answer = parse_answer(
        _body(user_id="u1", permissions=["a", "a", "b"], clearance_level=2, expires_at=1.5e9)
    )
    assert answer.clearance_level == "2"
    assert answer.permissions == frozenset({"a", "b"})
    assert answer.expires_at == 1.5e9


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe\xfd", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b'["user_id"]', "not a JSON object"),
        (_body(permissions=[]), "user_id"),
        (_body(user_id="", permissions=[]), "user_id"),
        (_body(user_id=7, permissions=[]), "user_id"),
        (_body(user_id="u1"), "permissions"),
        (_body(user_id="u1", permissions="repo"), "permissions"),
        (_body(user_id="u1", permissions=["a", 1]), "permissions"),
        (_body(user_id="u1", permissions=[], tenant_id=3), "tenant_id"),
        (_body(user_id="u1", permissions=[], clearance_level=True), "clearance_level"),
        (_body(user_id="u1", permissions=[], clearance_level=1.5), "clearance_level"),
        (_body(user_id="u1", permissions=[], expires_at="tomorrow"), "expires_at"),
        (_body(user_id="u1", permissions=[], expires_at=False), "expires_at"),
        # Not JSON at all (RFC 8259 §6), so refused before any field is read.
        (b'{"user_id":"u1","permissions":[],"expires_at":Infinity}', "Infinity is not JSON"),
        (_body(user_id="u1", permissions=[], workspaces="team-a"), "workspaces"),
        (_body(user_id="u1", permissions=[], workspaces=[""]), "workspaces"),
        (_body(user_id="u1", permissions=[], workspaces=[7]), "workspaces"),
        (_body(user_id="u1", permissions=[], workspaces=["w" * 256]), "workspaces"),
    ],
)
def test_an_answer_that_breaks_the_contract_fails_closed(body: bytes, why: str) -> None:
    with pytest.raises(BackendAuthUnavailable, match=why):
        parse_answer(body)
