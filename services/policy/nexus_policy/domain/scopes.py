"""Scope arithmetic: least privilege means requested ⊆ allowed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nexus_common import ValidationFailed

__all__ = ["ScopeDecision", "check_scopes"]


@dataclass(frozen=True)
class ScopeDecision:
    allowed: bool
    denied: tuple[str, ...]


def check_scopes(requested: Iterable[str], allowed: Iterable[str]) -> ScopeDecision:
    wanted = set(requested)
    if not wanted or "" in wanted:
        raise ValidationFailed(
            "requested_scopes must name at least one non-empty scope", field="requested_scopes"
        )
    denied = tuple(sorted(wanted - set(allowed)))
    return ScopeDecision(allowed=not denied, denied=denied)
