"""Scope arithmetic: least privilege means requested ⊆ allowed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nexus_common import ValidationFailed

__all__ = ["ScopeDecision", "check_scopes", "requested_scopes"]

_MAX_SCOPES = 100
_MAX_SCOPE = 256


@dataclass(frozen=True)
class ScopeDecision:
    allowed: bool
    denied: tuple[str, ...]


def requested_scopes(requested: Iterable[str], field: str = "scopes") -> tuple[str, ...]:
    """The requested scopes, sorted and without repeats; at least one, none empty."""
    wanted = set(requested)
    if not wanted:
        raise ValidationFailed(f"{field} must name at least one scope", field=field)
    if len(wanted) > _MAX_SCOPES:
        raise ValidationFailed(f"{field} may name at most {_MAX_SCOPES} scopes", field=field)
    if any(not s or len(s) > _MAX_SCOPE or any(c.isspace() for c in s) for s in wanted):
        raise ValidationFailed(
            f"each scope in {field} must be 1-{_MAX_SCOPE} characters without spaces",
            field=field,
        )
    return tuple(sorted(wanted))


def check_scopes(
    requested: Iterable[str], allowed: Iterable[str], field: str = "requested_scopes"
) -> ScopeDecision:
    wanted = requested_scopes(requested, field)
    denied = tuple(s for s in wanted if s not in set(allowed))
    return ScopeDecision(allowed=not denied, denied=denied)
