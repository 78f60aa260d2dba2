"""Storage of agent sessions and of the sealed keys that sign their tokens."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nexus_common import Keyring, ResealPage, reseal_column, utc
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..domain.sessions import NarrowedToken, Session, UserStamp
from ..domain.signing import ALGORITHM, SigningKey
from .orm import agent_sessions, narrowed_tokens, signing_keys

__all__ = [
    "NarrowedTokenRepository",
    "SessionRepository",
    "SigningKeyRepository",
    "session_row",
]


def _session(row: Any) -> Session:
    user = (
        UserStamp(row.acting_for, row.tenant_id or "", row.clearance_level or "")
        if row.acting_for is not None
        else None
    )
    return Session(
        kind=row.kind,
        agent_id=row.agent_id,
        provider_id=row.provider_id,
        provider_name=row.provider_name,
        connection_id=row.connection_id,
        scopes=tuple(row.scopes),
        created_at=utc(row.created_at),
        expires_at=utc(row.expires_at),
        user=user,
        closed_at=utc(row.closed_at),
        narrowed_token_id=row.narrowed_token_id,
        id=row.id,
    )


def session_row(session: Session) -> dict[str, Any]:
    user = session.user
    return {
        "id": session.id,
        "kind": session.kind,
        "agent_id": session.agent_id,
        "provider_id": session.provider_id,
        "provider_name": session.provider_name,
        "connection_id": session.connection_id,
        "scopes": list(session.scopes),
        "acting_for": user.user_id if user else None,
        "tenant_id": user.tenant_id if user else None,
        "clearance_level": user.clearance_level if user else None,
        "created_at": session.created_at,
        "expires_at": session.expires_at,
        "closed_at": session.closed_at,
        "narrowed_token_id": session.narrowed_token_id,
    }


class SessionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, session_id: str) -> Session | None:
        row = (
            await self._session.execute(
                select(agent_sessions).where(agent_sessions.c.id == session_id)
            )
        ).first()
        return _session(row) if row is not None else None

    async def close(self, session_id: str, now: datetime) -> bool:
        """Close an open session; False when it was already closed."""
        result = await self._session.execute(
            update(agent_sessions)
            .where(agent_sessions.c.id == session_id, agent_sessions.c.closed_at.is_(None))
            .values(closed_at=now)
        )
        return int(getattr(result, "rowcount", 0)) == 1

    async def close_for_agent(self, agent_id: str, now: datetime) -> int:
        result = await self._session.execute(
            update(agent_sessions)
            .where(agent_sessions.c.agent_id == agent_id, agent_sessions.c.closed_at.is_(None))
            .values(closed_at=now)
        )
        return int(getattr(result, "rowcount", 0))

    async def share_token(self, narrowed_token_id: str, now: datetime) -> bool:
        """Whether an open session still hands out this narrowed token."""
        found = await self._session.scalar(
            select(agent_sessions.c.id)
            .where(
                agent_sessions.c.narrowed_token_id == narrowed_token_id,
                agent_sessions.c.closed_at.is_(None),
                agent_sessions.c.expires_at > now,
            )
            .limit(1)
        )
        return found is not None

    async def purge(self, expired_before: datetime) -> int:
        result = await self._session.execute(
            delete(agent_sessions).where(agent_sessions.c.expires_at < expired_before)
        )
        return int(getattr(result, "rowcount", 0))


def _narrowed_aad(token_id: str) -> bytes:
    return f"narrowed_tokens/{token_id}".encode()


def _scope_key(scopes: tuple[str, ...]) -> str:
    return hashlib.sha256(" ".join(sorted(set(scopes))).encode()).hexdigest()


class NarrowedTokenRepository:
    """Provider tokens narrowed to a scope set, per connection and agent."""

    def __init__(self, session: AsyncSession, keyring: Keyring) -> None:
        self._session = session
        self._keyring = keyring

    def _to_domain(self, row: Any) -> NarrowedToken:
        token = self._keyring.open(row.access_token_sealed, _narrowed_aad(row.id)).decode()
        return NarrowedToken(
            id=row.id,
            connection_id=row.connection_id,
            agent_id=row.agent_id,
            access_token=token,
            created_at=utc(row.created_at),
            expires_at=utc(row.expires_at),
        )

    async def find(
        self, connection_id: str, agent_id: str, scopes: tuple[str, ...]
    ) -> NarrowedToken | None:
        """The newest token for this connection, agent and scope set."""
        row = (
            await self._session.execute(
                select(narrowed_tokens)
                .where(
                    narrowed_tokens.c.connection_id == connection_id,
                    narrowed_tokens.c.agent_id == agent_id,
                    narrowed_tokens.c.scope_key == _scope_key(scopes),
                )
                .order_by(narrowed_tokens.c.created_at.desc())
                .limit(1)
            )
        ).first()
        return self._to_domain(row) if row is not None else None

    async def add(self, token: NarrowedToken, scopes: tuple[str, ...]) -> None:
        await self._session.execute(
            narrowed_tokens.insert().values(
                id=token.id,
                connection_id=token.connection_id,
                agent_id=token.agent_id,
                scope_key=_scope_key(scopes),
                access_token_sealed=self._keyring.seal(
                    token.access_token.encode(), _narrowed_aad(token.id)
                ),
                created_at=token.created_at,
                expires_at=token.expires_at,
            )
        )

    async def get(self, token_id: str) -> NarrowedToken | None:
        row = (
            await self._session.execute(
                select(narrowed_tokens).where(narrowed_tokens.c.id == token_id)
            )
        ).first()
        return self._to_domain(row) if row is not None else None

    async def for_agent(self, agent_id: str) -> list[NarrowedToken]:
        rows = await self._session.execute(
            select(narrowed_tokens).where(narrowed_tokens.c.agent_id == agent_id)
        )
        return [self._to_domain(row) for row in rows]

    async def remove(self, token_ids: list[str]) -> None:
        if token_ids:
            await self._session.execute(
                delete(narrowed_tokens).where(narrowed_tokens.c.id.in_(token_ids))
            )

    async def purge(self, now: datetime, unexpiring_before: datetime) -> int:
        """Forget tokens past their expiry, and those without one minted before
        ``unexpiring_before`` (no session that could still revoke them is left)."""
        result = await self._session.execute(
            delete(narrowed_tokens).where(
                or_(
                    narrowed_tokens.c.expires_at < now,
                    and_(
                        narrowed_tokens.c.expires_at.is_(None),
                        narrowed_tokens.c.created_at < unexpiring_before,
                    ),
                )
            )
        )
        return int(getattr(result, "rowcount", 0))

    async def reseal(self, after: str | None, limit: int) -> ResealPage:
        return await reseal_column(
            self._session,
            self._keyring,
            narrowed_tokens.c.id,
            narrowed_tokens.c.access_token_sealed,
            _narrowed_aad,
            after=after,
            limit=limit,
        )


def _key_aad(kid: str) -> bytes:
    return f"signing_keys/{kid}".encode()


class SigningKeyRepository:
    def __init__(self, session: AsyncSession, keyring: Keyring) -> None:
        self._session = session
        self._keyring = keyring

    def _to_domain(self, row: Any) -> SigningKey:
        der = self._keyring.open(row.private_key_sealed, _key_aad(row.kid))
        private_key = serialization.load_der_private_key(der, password=None)
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"signing key {row.kid} is not an EC key")
        return SigningKey(
            kid=row.kid,
            private_key=private_key,
            created_at=utc(row.created_at),
            retire_at=utc(row.retire_at),
            expires_at=utc(row.expires_at),
        )

    async def add(self, key: SigningKey) -> None:
        der = key.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        await self._session.execute(
            signing_keys.insert().values(
                kid=key.kid,
                algorithm=ALGORITHM,
                private_key_sealed=self._keyring.seal(der, _key_aad(key.kid)),
                created_at=key.created_at,
                retire_at=key.retire_at,
                expires_at=key.expires_at,
            )
        )

    async def published(
        self, now: datetime, opened: Mapping[str, SigningKey] | None = None
    ) -> list[SigningKey]:
        """Keys whose tokens may still be alive, newest first. A key never
        changes once made, so one in ``opened`` is not unsealed again."""
        rows = await self._session.execute(
            select(signing_keys)
            .where(signing_keys.c.expires_at > now)
            .order_by(signing_keys.c.created_at.desc())
        )
        known = opened or {}
        return [known.get(row.kid) or self._to_domain(row) for row in rows]

    async def reseal(self, after: str | None, limit: int) -> ResealPage:
        return await reseal_column(
            self._session,
            self._keyring,
            signing_keys.c.kid,
            signing_keys.c.private_key_sealed,
            _key_aad,
            after=after,
            limit=limit,
        )
