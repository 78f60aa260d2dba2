"""No secret appears in the ``repr()`` or ``str()`` of a settings or domain object.

Settings objects end up in tracebacks, debuggers and log lines; a token in one
of them is a token in the logs.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from datetime import UTC, datetime
from types import ModuleType

import pytest
from nexus_broker.adapters.connection_repository import Attempt
from nexus_broker.adapters.policy_client import SessionAsk
from nexus_broker.adapters.rfc6749 import ClientCredentials
from nexus_broker.domain.connections import TokenSet
from nexus_broker.domain.providers import ProviderSpec
from nexus_broker.domain.sessions import NarrowedToken
from nexus_broker.settings import BrokerSettings
from nexus_common import ApiKeySet, Keyring, generate_key_spec
from nexus_gateway.settings import GatewaySettings
from nexus_policy.domain.agents import issue_key
from nexus_policy.settings import PolicySettings

KEYRING = generate_key_spec(7)
# Not a secret: lets the settings load without certificates.
PLAINTEXT = {"NEXUS_ALLOW_PLAINTEXT": "true"}
SECRETS = {
    "NEXUS_INTERNAL_TOKEN": "internal-token-SECRET-1",
    "NEXUS_INTERNAL_TOKEN_PREVIOUS": "internal-token-SECRET-2",
    "NEXUS_ADMIN_API_KEYS": "ops:nxa_admin_SECRET_3_0123456789abcdef",
    "NEXUS_RESOURCE_SERVER_KEYS": "internal-ops:nxrs_resource_server_SECRET_7_0123456789",
    "NEXUS_STATE_KEY": "state-key-SECRET-4-0123456789abcdef0123",
    "NEXUS_KEYRING": KEYRING,
    "DATABASE_URL": "postgresql+asyncpg://nexus:db-password-SECRET-5@db/nexus",
    "BACKEND_AUTH_URL": "https://app:backend-SECRET-6@backend.example/auth",
}
NOW = datetime(2026, 11, 23, tzinfo=UTC)
# Field names that hold secret values wherever they occur.
SECRET_FIELD = re.compile(
    r"(secret|password|access_token|refresh_token|session_token|user_context_token"
    r"|internal_token|state_key|keyring|private_key|code_verifier|nonce|database_url|^key$"
    r"|^token$|^url$)"
)


def _secret_values() -> list[str]:
    values = [v for k, v in SECRETS.items() if k != "NEXUS_KEYRING"]
    return [*values, KEYRING.split(":", 1)[1], "db-password-SECRET-5", "backend-SECRET-6"]


def _assert_hidden(obj: object, *secrets: str) -> None:
    for text in (repr(obj), str(obj)):
        for secret in secrets or _secret_values():
            assert secret not in text, f"{secret!r} shows in {text}"


@pytest.mark.parametrize("settings", [BrokerSettings, GatewaySettings, PolicySettings])
def test_settings_show_no_secret(
    settings: type[BrokerSettings] | type[GatewaySettings] | type[PolicySettings],
) -> None:
    loaded = settings.from_env(SECRETS | PLAINTEXT)
    _assert_hidden(loaded)
    # Still useful: non-secret settings are shown.
    assert "listen=" in repr(loaded)


def test_policy_backend_settings_show_no_credentials() -> None:
    backend = PolicySettings.from_env(SECRETS | PLAINTEXT).backend_auth
    assert backend is not None
    _assert_hidden(backend)


def test_keyrings_and_key_sets_show_names_and_versions_only() -> None:
    keyring = Keyring.from_spec(KEYRING)
    keys = ApiKeySet.from_spec(SECRETS["NEXUS_ADMIN_API_KEYS"])
    _assert_hidden(keyring)
    _assert_hidden(keys)
    assert repr(keyring) == "Keyring(primary=7, versions=[7])"
    assert repr(keys) == "ApiKeySet(names=['ops'])"


def test_domain_objects_show_no_secret() -> None:
    issued = issue_key()
    objects: list[tuple[object, str]] = [
        (ProviderSpec(name="p", client_secret="client-SECRET"), "client-SECRET"),
        (TokenSet("access-SECRET", refresh_token="refresh-SECRET"), "-SECRET"),
        (ClientCredentials("id", "client-SECRET", "client_secret_basic"), "client-SECRET"),
        (Attempt("a", "c", "verifier-SECRET", "nonce-SECRET", NOW, None), "-SECRET"),
        (SessionAsk("agent", ["s"], "user-token-SECRET", "w"), "user-token-SECRET"),
        (NarrowedToken("c", "agent", "access-SECRET", NOW, None), "access-SECRET"),
        (issued, issued.key),
    ]
    for obj, secret in objects:
        _assert_hidden(obj, secret)


def _modules(package: str) -> list[ModuleType]:
    root = importlib.import_module(package)
    found = [root]
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if ".migrations" not in info.name and not info.name.endswith("__main__"):
            found.append(importlib.import_module(info.name))
    return found


def _known_safe(cls: type, f: dataclasses.Field[object]) -> bool:
    if str(f.type).startswith("bool"):  # a flag about a secret, such as has_client_secret
        return True
    # A credential field's key names a header or query parameter; an ApiKeySet
    # shows only its key names (test above).
    return (cls.__qualname__, f.name) == ("CredentialField", "key") or str(f.type) == "ApiKeySet"


@pytest.mark.parametrize(
    "package", ["nexus_broker", "nexus_policy", "nexus_gateway", "nexus_common"]
)
def test_every_secret_named_dataclass_field_is_kept_out_of_repr(package: str) -> None:
    """A new secret field must be declared ``field(repr=False)``; this finds it."""
    shown = sorted(
        f"{cls.__module__}.{cls.__qualname__}.{f.name}"
        for module in _modules(package)
        for cls in vars(module).values()
        if dataclasses.is_dataclass(cls)
        and isinstance(cls, type)
        and cls.__module__ == module.__name__
        for f in dataclasses.fields(cls)
        if SECRET_FIELD.search(f.name) and f.repr and not _known_safe(cls, f)
    )
    assert shown == []
