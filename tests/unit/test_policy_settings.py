from __future__ import annotations

import pytest
from nexus_common import ConfigError
from nexus_policy.settings import PolicySettings

BASE = {
    "NEXUS_INTERNAL_TOKEN": "t" * 32,
    "NEXUS_POLICY_DATABASE_URL": "sqlite://",
    "NEXUS_ALLOW_PLAINTEXT": "true",
}


def test_without_a_backend_obo_is_off() -> None:
    assert PolicySettings.from_env(BASE).backend_auth is None


def test_the_docs_name_works_and_the_prefixed_name_wins() -> None:
    docs = PolicySettings.from_env(BASE | {"BACKEND_AUTH_URL": "https://app.example/auth/me"})
    assert docs.backend_auth is not None
    assert docs.backend_auth.url == "https://app.example/auth/me"
    both = PolicySettings.from_env(
        BASE
        | {
            "BACKEND_AUTH_URL": "https://app.example/auth/me",
            "NEXUS_BACKEND_AUTH_URL": "https://internal.example/me",
        }
    )
    assert both.backend_auth is not None and both.backend_auth.url == "https://internal.example/me"


@pytest.mark.parametrize(
    "extra",
    [
        {"BACKEND_AUTH_URL": "ftp://app.example/auth"},
        {"BACKEND_AUTH_URL": "https://app.example", "NEXUS_BACKEND_AUTH_TIMEOUT_SECONDS": "0"},
        {"BACKEND_AUTH_URL": "https://app.example", "NEXUS_USER_TOKEN_ISSUER": "https://idp"},
    ],
)
def test_a_half_configured_backend_refuses_to_start(extra: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        PolicySettings.from_env(BASE | extra)


def test_local_verification_needs_all_three_settings() -> None:
    settings = PolicySettings.from_env(
        BASE
        | {
            "BACKEND_AUTH_URL": "https://app.example/auth/me",
            "NEXUS_USER_TOKEN_ISSUER": "https://idp.example",
            "NEXUS_USER_TOKEN_AUDIENCE": "nexus",
            "NEXUS_USER_TOKEN_JWKS_URI": "https://idp.example/jwks.json",
        }
    )
    assert settings.backend_auth is not None
    assert settings.backend_auth.token_jwks_uri == "https://idp.example/jwks.json"


@pytest.mark.parametrize(
    ("extra", "implicit"),
    [
        ({}, False),  # production's default: ownership comes only from the backend
        ({"NEXUS_ENVIRONMENT": "development"}, True),
        ({"NEXUS_USER_ID_IS_WORKSPACE": "true"}, True),
        ({"NEXUS_ENVIRONMENT": "development", "NEXUS_USER_ID_IS_WORKSPACE": "false"}, False),
    ],
)
def test_the_user_id_names_a_workspace_only_where_the_deployment_says_so(
    extra: dict[str, str], implicit: bool
) -> None:
    settings = PolicySettings.from_env(BASE | {"BACKEND_AUTH_URL": "https://a.example/me"} | extra)
    assert settings.backend_auth is not None
    assert settings.backend_auth.user_id_is_workspace is implicit
