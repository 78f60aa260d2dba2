"""The access decision as a table: callers x actions x targets, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from nexus_broker.domain.sessions import NarrowedToken, scopes_beyond
from nexus_common import AdminPrincipal, AgentPrincipal, NexusError, Principal
from nexus_policy.domain.access import (
    Action,
    ConnectionRef,
    Reach,
    Target,
    decide,
    effective_bindings,
)
from nexus_policy.domain.agents import Agent
from nexus_policy.domain.bindings import OPEN_BINDINGS, Bindings

NOW = datetime(2026, 1, 1, tzinfo=UTC)
READ, WRITE = "crm:read", "crm:write"


def agent(agent_id: str, bindings: Bindings | None, *, enabled: bool = True) -> Agent:
    return Agent(agent_id, "", (READ,), enabled, "k" * 16, NOW, NOW, bindings, NOW)


@dataclass(frozen=True)
class User:
    user_id: str
    tenant_id: str
    permissions: frozenset[str]
    workspaces: frozenset[str]


ALICE = User("alice", "acme", frozenset({READ}), frozenset({"alice", "team"}))
AGENTS = {
    "ws-a": agent("ws-a", Bindings(("*",), ("alice",))),
    "crm-only": agent("crm-only", Bindings(("crm",), ("*",))),
    "obo-only": agent("obo-only", Bindings(("*",), (), on_behalf_of_only=True)),
    "star": agent("star", Bindings(("*",), ("*",))),
    "full": agent("full", Bindings(("*",), ("*",), full_connection_access=True)),
    "off": agent("off", Bindings(("*",), ("*",)), enabled=False),
}


def target(workspace: str, provider: str = "crm", granted: tuple[str, ...] = (READ,)) -> Target:
    return Target(f"id-{provider}", provider, ConnectionRef("c1", workspace, granted))


def answer(caller: Principal, action: str, name: str, tgt: Target, user: User | None) -> str:
    acting = AGENTS[name]
    try:
        decide(caller, action, acting, acting.bindings, tgt, (READ,), user)
    except NexusError as error:
        return error.reason
    return "OK"


CASES = [
    # caller, action, agent, target, expected
    ("agent", Action.GET_TOKEN, "ws-a", target("alice"), "OK"),
    ("agent", Action.GET_TOKEN, "ws-a", target("bob"), "WORKSPACE_NOT_BOUND"),
    ("agent", Action.GET_TOKEN, "crm-only", target("bob", "mail"), "PROVIDER_NOT_BOUND"),
    ("agent", Action.GET_TOKEN, "obo-only", target("alice"), "AGENT_OBO_ONLY"),
    ("agent", Action.GET_TOKEN, "off", target("alice"), "AGENT_DISABLED"),
    (
        "agent",
        Action.GET_TOKEN,
        "star",
        target("bob", granted=(READ, WRITE)),
        "CONNECTION_EXCEEDS_AGENT_SCOPES",
    ),
    ("agent", Action.GET_TOKEN, "full", target("bob", granted=(READ, WRITE)), "OK"),
    ("agent", Action.REFRESH, "ws-a", target("bob"), "WORKSPACE_NOT_BOUND"),
    ("agent", Action.AGENT_SESSION, "ws-a", target("alice", granted=(READ, WRITE)), "OK"),
    ("agent", Action.AGENT_SESSION, "obo-only", target("alice"), "AGENT_OBO_ONLY"),
    ("agent", Action.OBO_SESSION, "obo-only", target("team"), "OK"),
    ("agent", Action.OBO_SESSION, "obo-only", target("bob"), "USER_WORKSPACE_NOT_OWNED"),
    ("agent", Action.OBO_SESSION, "ws-a", target("team"), "WORKSPACE_NOT_BOUND"),
    ("agent", Action.OBO_SESSION, "crm-only", target("alice", "mail"), "PROVIDER_NOT_BOUND"),
    ("admin", Action.GET_TOKEN, "obo-only", target("bob", "mail", (READ, WRITE)), "OK"),
    ("admin", Action.AGENT_SESSION, "ws-a", target("bob"), "WORKSPACE_NOT_BOUND"),
    ("other", Action.AGENT_SESSION, "ws-a", target("alice"), "AGENT_MISMATCH"),
]


@pytest.mark.parametrize(("who", "action", "name", "tgt", "expected"), CASES)
def test_each_cell_of_the_access_table(
    who: str, action: str, name: str, tgt: Target, expected: str
) -> None:
    callers: dict[str, Principal] = {
        "agent": AgentPrincipal(name),
        "admin": AdminPrincipal("backend"),
        "other": AgentPrincipal("someone-else"),
    }
    caller = callers[who]
    user = ALICE if action == Action.OBO_SESSION else None
    assert answer(caller, action, name, tgt, user) == expected


def of_tenant(workspace: str, tenant: str) -> Target:
    return Target("id-crm", "crm", ConnectionRef("c1", workspace, (READ,), tenant))


# Agent sessions serving ALICE (tenant "acme"), as a multi-user server's are:
# the agent's own scopes and bindings, and only connections Alice owns.
OWNED_CASES = [
    ("star", target("alice"), "OK"),
    ("star", target("bob"), "USER_WORKSPACE_NOT_OWNED"),
    ("ws-a", target("team"), "WORKSPACE_NOT_BOUND"),
    ("star", of_tenant("alice", "acme"), "OK"),
    ("star", of_tenant("alice", "globex"), "USER_WORKSPACE_NOT_OWNED"),
    ("obo-only", target("alice"), "AGENT_OBO_ONLY"),
]


@pytest.mark.parametrize(("name", "tgt", "expected"), OWNED_CASES)
def test_an_agent_session_serving_a_user_reaches_only_that_users_connections(
    name: str, tgt: Target, expected: str
) -> None:
    assert answer(AgentPrincipal(name), Action.AGENT_SESSION, name, tgt, ALICE) == expected


def test_a_connection_of_another_tenant_is_never_the_users() -> None:
    obo = AGENTS["obo-only"]
    with pytest.raises(NexusError) as refused:
        decide(
            AgentPrincipal("obo-only"),
            Action.OBO_SESSION,
            obo,
            obo.bindings,
            of_tenant("team", "globex"),
            (READ,),
            ALICE,
        )
    assert refused.value.reason == "USER_WORKSPACE_NOT_OWNED"
    star = AGENTS["star"]
    assert decide(
        AgentPrincipal("star"),
        Action.AGENT_SESSION,
        star,
        star.bindings,
        Target("id-crm", "crm"),
        (READ,),
        ALICE,
    ) == Reach(frozenset({"alice", "team"}), "acme")


def test_a_session_without_a_connection_looks_only_where_it_may() -> None:
    open_search = Target("id-crm", "crm")
    ws_a = AGENTS["ws-a"]
    assert decide(
        AgentPrincipal("ws-a"), Action.AGENT_SESSION, ws_a, ws_a.bindings, open_search, (READ,)
    ) == Reach(frozenset({"alice"}))
    obo = AGENTS["obo-only"]
    assert decide(
        AgentPrincipal("obo-only"),
        Action.OBO_SESSION,
        obo,
        obo.bindings,
        open_search,
        (READ,),
        ALICE,
    ) == Reach(frozenset({"alice", "team"}), ALICE.tenant_id)
    star = AGENTS["star"]
    assert decide(
        AgentPrincipal("star"), Action.AGENT_SESSION, star, star.bindings, open_search, (READ,)
    ) == Reach(None)


def test_an_unbound_agent_gets_the_deployments_rule() -> None:
    unbound = agent("new-agent", None)
    assert effective_bindings(unbound, target("alice"), allow_unbound=True) == OPEN_BINDINGS
    with pytest.raises(NexusError) as refused:
        effective_bindings(unbound, target("alice"), allow_unbound=False)
    assert refused.value.reason == "AGENT_NOT_BOUND"
    assert (
        'PATCH /admin/v1/agents/new-agent {"bindings": {"providers": ["crm"], '
        '"workspaces": ["alice"]}}' in refused.value.message
    )


def test_a_narrowed_token_is_shared_until_it_nears_expiry_and_the_session_ends_with_it() -> None:
    hour, quarter, skew = timedelta(hours=1), timedelta(minutes=15), timedelta(seconds=30)
    fresh = NarrowedToken("c1", "a1", "t", NOW, NOW + hour)
    assert fresh.usable_for(quarter, NOW, None, skew)
    # A session longer than what is left of the token still shares it, and ends with it.
    assert fresh.usable_for(hour, NOW + quarter, None, skew)
    assert fresh.usable_for(quarter, NOW + hour - 2 * skew, None, skew)
    assert not fresh.usable_for(quarter, NOW + hour - skew, None, skew)
    # A session shorter than the skew needs only its own lifetime.
    assert fresh.usable_for(timedelta(seconds=10), NOW + hour - skew, None, skew)
    # Minted before the agent's sessions were ended: never handed out again.
    assert not fresh.usable_for(quarter, NOW, NOW + timedelta(seconds=1), skew)
    # No expiry given by the provider: nothing says when it stops working.
    assert not NarrowedToken("c1", "a1", "t", NOW, None).usable_for(quarter, NOW, None, skew)


@pytest.mark.parametrize(
    ("asked", "answered", "beyond"),
    [
        (("read",), (), ()),  # RFC 6749 §5.1: no scope in the answer means as asked
        (("read",), ("read",), ()),
        (("read",), ("read", "write"), ("write",)),  # the provider ignored the narrowing
        (("read", "write"), ("read",), ()),  # granted less: nothing beyond
    ],
)
def test_a_narrowing_answer_is_judged_by_its_scope(
    asked: tuple[str, ...], answered: tuple[str, ...], beyond: tuple[str, ...]
) -> None:
    assert scopes_beyond(asked, answered) == beyond
