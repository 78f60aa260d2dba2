"""The broker's tables. Rows never leave the adapters: repositories convert."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
)

__all__ = [
    "agent_sessions",
    "audit_events",
    "authorization_attempts",
    "connections",
    "metadata",
    "narrowed_tokens",
    "providers",
    "signing_keys",
]

metadata = MetaData()

providers = Table(
    "providers",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(63), nullable=False),
    Column("auth_type", String(16), nullable=False),
    Column("category", String(63), nullable=False, default=""),
    Column("description", Text, nullable=False, default=""),
    Column("client_id", Text, nullable=False, default=""),
    # AES-256-GCM, bound to the row by AAD "providers/<id>/client_secret".
    Column("client_secret_sealed", LargeBinary, nullable=True),
    Column("auth_url", Text, nullable=False, default=""),
    Column("token_url", Text, nullable=False, default=""),
    Column("issuer", Text, nullable=False, default=""),
    Column("enable_discovery", Boolean, nullable=False, default=False),
    Column("scopes", JSON, nullable=False),
    Column("api_base_url", Text, nullable=False, default=""),
    Column("user_info_endpoint", Text, nullable=False, default=""),
    Column("jwks_uri", Text, nullable=False, default=""),
    Column("revocation_url", Text, nullable=False, default=""),
    Column("params", JSON, nullable=False),
    Column("discovery", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    # Who moved its token endpoints while connections held tokens: refreshes
    # wait for an admin to confirm the move.
    Column("endpoints_moved_by", String(255), nullable=True),
    # Names are unique among live providers only; a deleted name can be reused.
    Index(
        "uq_providers_live_name",
        "name",
        unique=True,
        sqlite_where=Column("deleted_at").is_(None),
        postgresql_where=Column("deleted_at").is_(None),
    ),
    Index("ix_providers_auth_type_category", "auth_type", "category"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("event_time", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", String(255), nullable=False),
    Column("action", String(64), nullable=False),
    Column("resource", String(255), nullable=False, index=True),
    Column("details", JSON, nullable=False),
)

connections = Table(
    "connections",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workspace_id", String(255), nullable=False),
    # The app's tenant of the workspace ("" for none): migration 0008.
    Column("tenant_id", String(255), nullable=False, default=""),
    Column("provider_id", String(36), ForeignKey("providers.id"), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("return_url", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("pending_until", DateTime(timezone=True), nullable=True),
    # AES-256-GCM of the token set or static credentials (JSON), bound to the
    # row by AAD "connections/<id>/credentials".
    Column("credentials_sealed", LargeBinary, nullable=True),
    Column("token_expires_at", DateTime(timezone=True), nullable=True),
    Column("last_refreshed_at", DateTime(timezone=True), nullable=True),
    Column("next_refresh_at", DateTime(timezone=True), nullable=True),
    Column("refresh_failures", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=False, default=""),
    # The last refresh grant for a narrowed token: rate-limited like forced refreshes.
    Column("last_narrowed_at", DateTime(timezone=True), nullable=True),
    # A refresh in progress: whoever holds an unexpired lease refreshes; others wait.
    # lease_owner holds the claim's fence (broker id and a per-claim nonce).
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Index("ix_connections_workspace", "workspace_id", "created_at"),
    Index("ix_connections_due", "status", "next_refresh_at"),
    Index("ix_connections_provider", "provider_id", "status"),
)

authorization_attempts = Table(
    "authorization_attempts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column(
        "connection_id",
        String(36),
        ForeignKey("connections.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # AAD "authorization_attempts/<id>/code_verifier"; absent for static credentials.
    Column("code_verifier_sealed", LargeBinary, nullable=True),
    Column("nonce", String(128), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),
    # The per-provider callback sent to the provider, and the provider URL that
    # auth_url (Nexus' start page) leads to; both absent for static credentials.
    Column("redirect_uri", Text, nullable=True),
    Column("authorization_url", Text, nullable=True),
    # SHA-256 (hex) of the binding cookie of the browser that opened auth_url first.
    Column("binding_hash", String(64), nullable=True),
    # Live credential checks spent on this state (the capture page's limit).
    Column("capture_checks", Integer, nullable=False, server_default="0"),
    # The app must confirm the completed connection (ConfirmConnection), with
    # the code whose SHA-256 (hex) is kept here until it is used.
    Column("confirmation_required", Boolean, nullable=False, server_default=false()),
    Column("confirmation_hash", String(64), nullable=True),
)

agent_sessions = Table(
    "agent_sessions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("agent_id", String(63), nullable=False),
    Column("provider_id", String(36), nullable=False),
    Column("provider_name", String(63), nullable=False),
    Column("connection_id", String(36), nullable=True),
    Column("scopes", JSON, nullable=False),
    Column("acting_for", String(255), nullable=True),
    Column("tenant_id", String(255), nullable=True),
    Column("clearance_level", String(255), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    # The narrowed token the session handed out, if any (narrowed_tokens.id).
    Column("narrowed_token_id", String(36), nullable=True),
    Index("ix_agent_sessions_expires_at", "expires_at"),
    Index("ix_agent_sessions_agent", "agent_id", "closed_at"),
)

# Provider tokens narrowed to a scope set, kept until near expiry so that
# sessions asking the same share one instead of minting one each. Never the
# connection's own token; sealed, AAD "narrowed_tokens/<id>".
narrowed_tokens = Table(
    "narrowed_tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("connection_id", String(36), nullable=False),
    Column("agent_id", String(63), nullable=False),
    # SHA-256 (hex) of the sorted, space-joined scopes.
    Column("scope_key", String(64), nullable=False),
    Column("access_token_sealed", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Index("ix_narrowed_tokens_key", "connection_id", "agent_id", "scope_key"),
    Index("ix_narrowed_tokens_agent", "agent_id"),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(32), primary_key=True),
    Column("algorithm", String(16), nullable=False),
    # PKCS#8 DER, AES-256-GCM sealed and bound to the row by AAD "signing_keys/<kid>".
    Column("private_key_sealed", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("retire_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
