"""Who a call acts for, as a typed value that use cases take explicitly.

The gateway establishes the caller and the services pass it along in
metadata (``Caller``). Paths that release, refresh or describe a credential
must not read it from ambient state: they take a ``Principal``, so that a
path without one fails type checking instead of allowing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._auth import Caller
from ._errors import CallerNotAllowed

__all__ = ["AdminPrincipal", "AgentPrincipal", "Principal", "principal_of"]


@dataclass(frozen=True)
class AdminPrincipal:
    """An admin key: the customer's backend, with full access."""

    key_name: str


@dataclass(frozen=True)
class AgentPrincipal:
    agent_id: str


Principal = AdminPrincipal | AgentPrincipal


def principal_of(caller: Caller | None) -> Principal:
    """The principal behind an authenticated call; anything else is refused."""
    if caller is not None and caller.kind == "admin":
        return AdminPrincipal(caller.name)
    if caller is not None and caller.kind == "agent":
        return AgentPrincipal(caller.name)
    raise CallerNotAllowed("this method needs an admin key or an agent key")
