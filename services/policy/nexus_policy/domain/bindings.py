"""Bindings: where an agent may act, beside the scopes it may ask for.

An agent's ``allowed_scopes`` bound *what* it may ask for; its bindings bound
*where*: the providers it may use, and the workspaces it may act in. The
workspaces are an explicit list, ``*`` for every workspace, or none at all
with ``on_behalf_of_only``, when the agent acts only for a user and only in
that user's workspaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nexus_common import ValidationFailed

__all__ = ["ANY", "OPEN_BINDINGS", "Bindings", "validate_bindings"]

ANY = "*"
_MAX_ENTRIES = 100
_MAX_NAME = 255
# Workspace ids are the app's own; provider names are lower-case. Both are
# printable ASCII without spaces, so an audit line or a message never hides one.
_ENTRY = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True)
class Bindings:
    providers: tuple[str, ...]
    workspaces: tuple[str, ...] = ()
    on_behalf_of_only: bool = False
    full_connection_access: bool = False

    @property
    def any_provider(self) -> bool:
        return self.providers == (ANY,)

    @property
    def any_workspace(self) -> bool:
        return self.workspaces == (ANY,)

    def allows_provider(self, provider_id: str, provider_name: str) -> bool:
        return self.any_provider or bool({provider_id, provider_name} & set(self.providers))

    def allows_workspace(self, workspace_id: str) -> bool:
        return self.any_workspace or workspace_id in self.workspaces

    def as_dict(self) -> dict[str, Any]:
        return {
            "providers": list(self.providers),
            "workspaces": list(self.workspaces),
            "on_behalf_of_only": self.on_behalf_of_only,
            "full_connection_access": self.full_connection_access,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bindings:
        return cls(
            providers=tuple(data["providers"]),
            workspaces=tuple(data["workspaces"]),
            on_behalf_of_only=bool(data["on_behalf_of_only"]),
            full_connection_access=bool(data["full_connection_access"]),
        )


# What an unbound agent reaches where the deployment allows unbound agents
# (development): everything, so the docs' snippets run as written.
OPEN_BINDINGS = Bindings(providers=(ANY,), workspaces=(ANY,), full_connection_access=True)


def _check_list(values: tuple[str, ...], field: str) -> None:
    if len(values) > _MAX_ENTRIES:
        raise ValidationFailed(f"{field} may name at most {_MAX_ENTRIES} entries", field=field)
    for value in values:
        if not value or len(value) > _MAX_NAME or not _ENTRY.fullmatch(value):
            raise ValidationFailed(
                f"each entry of {field} must be 1-{_MAX_NAME} printable characters without spaces",
                field=field,
            )
    if len(set(values)) != len(values):
        raise ValidationFailed(f"{field} lists an entry twice", field=field)
    if ANY in values and len(values) > 1:
        raise ValidationFailed(f'"*" in {field} means every one: list it alone', field=field)


def validate_bindings(bindings: Bindings) -> None:
    if not bindings.providers:
        raise ValidationFailed(
            'bindings.providers must name at least one provider, or "*" for every provider',
            field="bindings.providers",
        )
    _check_list(bindings.providers, "bindings.providers")
    _check_list(bindings.workspaces, "bindings.workspaces")
    if bindings.on_behalf_of_only and bindings.workspaces:
        raise ValidationFailed(
            "an agent bound on_behalf_of_only acts in its user's workspaces: "
            "leave bindings.workspaces empty",
            field="bindings.workspaces",
        )
    if not bindings.on_behalf_of_only and not bindings.workspaces:
        raise ValidationFailed(
            'bindings.workspaces must list workspaces, or "*" for every workspace, '
            "unless the agent is on_behalf_of_only",
            field="bindings.workspaces",
        )
