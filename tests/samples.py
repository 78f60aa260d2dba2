"""Provider definitions shared by tests: the docs' Salesforce registration."""

from __future__ import annotations

from nexus_broker.domain.providers import ProviderSpec

SALESFORCE_SPEC = ProviderSpec(
    name="salesforce",
    auth_type="oauth2",
    client_id="SF_CLIENT_ID",
    client_secret="SF_CLIENT_SECRET",
    auth_url="https://login.salesforce.com/services/oauth2/authorize",
    token_url="https://login.salesforce.com/services/oauth2/token",
    scopes=("crm:contacts:read", "crm:contacts:write"),
    params={"skip_scope_on_exchange": True},
)
