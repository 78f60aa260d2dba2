"""Who a call acts for, as a typed value that use cases take explicitly.

The gateway establishes the caller and the services pass it along in
metadata (``Caller``). Paths that release, refresh or describe a credential
must not read it from ambient state: they take a ``Principal``, so that a
path without one fails type checking instead of allowing.

A resource server (``ResourceServerPrincipal``) is no ``Principal``: it may
only introspect session tokens, so no use case but introspection accepts it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._auth import Caller
from ._errors import CallerNotAllowed

__all__ = [
    "AdminPrincipal",
    "AgentPrincipal",
    "Introspector",
    "Principal",
    "ResourceServerPrincipal",
    "introspector_of",
    "principal_of",
]


@dataclass(frozen=True)
class AdminPrincipal:
    """An admin key: the customer's backend, with full access."""

    key_name: str


@dataclass(frozen=True)
class AgentPrincipal:
    agent_id: str


@dataclass(frozen=True)
class ResourceServerPrincipal:
    """A resource-server key: the service behind one provider, which receives
    session tokens for it (their ``aud``) and asks whether they are active."""

    provider: str


Principal = AdminPrincipal | AgentPrincipal
# Who may ask an introspection (RFC 7662 §2.1: the protected resource is authorized).
Introspector = Principal | ResourceServerPrincipal


def principal_of(caller: Caller | None) -> Principal:
    """The principal behind an authenticated call; anything else is refused."""
    if caller is not None and caller.kind == "admin":
        return AdminPrincipal(caller.name)
    if caller is not None and caller.kind == "agent":
        return AgentPrincipal(caller.name)
    if caller is not None and caller.kind == "resource_server":
        raise CallerNotAllowed("a resource-server key may only introspect session tokens")
    raise CallerNotAllowed("this method needs an admin key or an agent key")


def introspector_of(caller: Caller | None) -> Introspector:
    """The principal behind an introspection call, resource servers included."""
    if caller is not None and caller.kind == "resource_server":
        return ResourceServerPrincipal(caller.name)
    return principal_of(caller)
