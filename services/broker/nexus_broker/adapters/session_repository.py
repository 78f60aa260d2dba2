"""Storage of agent sessions and of the sealed keys that sign their tokens."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nexus_common import Keyring, reseal_column, utc
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..domain.sessions import Session, UserStamp
from ..domain.signing import ALGORITHM, SigningKey
from .orm import agent_sessions, signing_keys

__all__ = ["SessionRepository", "SigningKeyRepository"]


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
        id=row.id,
    )


def _token_aad(session_id: str) -> bytes:
    return f"agent_sessions/{session_id}/access_token".encode()


class SessionRepository:
    def __init__(self, session: AsyncSession, keyring: Keyring) -> None:
        self._session = session
        self._keyring = keyring

    async def add(self, session: Session, narrowed_token: str | None = None) -> None:
        """Store a session, and the provider token narrowed for it alone, if any."""
        user = session.user
        sealed = (
            self._keyring.seal(narrowed_token.encode(), _token_aad(session.id))
            if narrowed_token
            else None
        )
        await self._session.execute(
            agent_sessions.insert().values(
                id=session.id,
                kind=session.kind,
                agent_id=session.agent_id,
                provider_id=session.provider_id,
                provider_name=session.provider_name,
                connection_id=session.connection_id,
                scopes=list(session.scopes),
                acting_for=user.user_id if user else None,
                tenant_id=user.tenant_id if user else None,
                clearance_level=user.clearance_level if user else None,
                created_at=session.created_at,
                expires_at=session.expires_at,
                closed_at=session.closed_at,
                access_token_sealed=sealed,
            )
        )

    async def get(self, session_id: str) -> Session | None:
        row = (
            await self._session.execute(
                select(agent_sessions).where(agent_sessions.c.id == session_id)
            )
        ).first()
        return _session(row) if row is not None else None

    async def narrowed_token(self, session_id: str) -> str | None:
        sealed = await self._session.scalar(
            select(agent_sessions.c.access_token_sealed).where(agent_sessions.c.id == session_id)
        )
        return self._keyring.open(sealed, _token_aad(session_id)).decode() if sealed else None

    async def close(self, session_id: str, now: datetime) -> bool:
        """Close an open session and forget its own token; False when it was
        already closed."""
        result = await self._session.execute(
            update(agent_sessions)
            .where(agent_sessions.c.id == session_id, agent_sessions.c.closed_at.is_(None))
            .values(closed_at=now, access_token_sealed=None)
        )
        return int(getattr(result, "rowcount", 0)) == 1

    async def reseal(self) -> int:
        return await reseal_column(
            self._session,
            self._keyring,
            agent_sessions.c.id,
            agent_sessions.c.access_token_sealed,
            _token_aad,
        )

    async def purge(self, expired_before: datetime) -> int:
        result = await self._session.execute(
            delete(agent_sessions).where(agent_sessions.c.expires_at < expired_before)
        )
        return int(getattr(result, "rowcount", 0))


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

    async def reseal(self) -> int:
        return await reseal_column(
            self._session,
            self._keyring,
            signing_keys.c.kid,
            signing_keys.c.private_key_sealed,
            _key_aad,
        )
