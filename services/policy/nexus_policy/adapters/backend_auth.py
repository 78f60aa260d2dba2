"""Asking the customer's backend who the user behind an on-behalf-of request is.

The contract a customer implements at ``BACKEND_AUTH_URL``::

    GET <BACKEND_AUTH_URL>
    Authorization: Bearer <user_context_token>
    Accept: application/json

    200 with a JSON object:
        user_id          string, required, non-empty
        permissions      array of strings, required (may be empty)
        tenant_id        string, optional, default ""
        clearance_level  string or integer, optional, default ""; kept as a string
        expires_at       number, optional: Unix seconds when the user's token expires
        workspaces       array of strings, optional: workspaces the user owns
    401 or 403           the token is not valid (or has expired)

A user owns every workspace listed in ``workspaces``, and, where the
deployment says so (``user_id_is_workspace``, NEXUS_USER_ID_IS_WORKSPACE: on in
development, off in production), the one named by their ``user_id``; an
on-behalf-of session reaches only connections in those, and only those of the
user's tenant or of none (the policy's domain compares tenants). The implicit
rule is off in production because ids are not unique across tenants: user
``1001`` of one tenant must not own organisation ``1001`` of another.

The user's token lives until the earlier of its JWT ``exp`` (when it is
a JWT) and ``expires_at``, and no session acting for them lives longer.

A 401 or 403, or an ``expires_at`` already past, raises ``UserTokenInvalid``.
A ``user_id``, ``tenant_id`` or ``clearance_level`` longer than 255 characters
raises ``UserContextInvalid``: Nexus cannot record a session for that user.
Anything else fails closed with ``BackendAuthUnavailable``: another status, a
redirect, a body that is not such an object, no connection, or no complete
answer within ``timeout_seconds``. Without a confirmed user there is no OBO.

With ``LocalVerification`` the token is first verified as a JWT against the
issuer's JWKS (signature, ``iss``, ``aud``, ``exp``); a token that fails is
refused without asking the backend, and keys that cannot be fetched make the
backend unavailable.

Answers are cached, keyed by the token's SHA-256 so the token is never kept,
for at most ``cache_seconds`` and never past the token's expiry: the earliest
of the verified ``exp`` (or, without local verification, the ``exp`` of a JWT
read unverified, which can only shorten the time) and the backend's
``expires_at``. Concurrent lookups of one token share one backend call.
Neither the token nor the backend's body ever appears in a message.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeGuard

import httpx
import jwt
from nexus_common import (
    BackendAuthUnavailable,
    JwksUnavailable,
    JwksVerifier,
    JwtVerificationError,
    OutboundRefused,
    UserContextInvalid,
    UserTokenInvalid,
    ValidationFailed,
    outbound_span,
    parse_json,
    pass_trace_context,
)
from opentelemetry.trace import Span

from ..metrics import BACKEND_AUTH_CACHE_HITS, BACKEND_AUTH_REQUESTS, BACKEND_AUTH_SECONDS

__all__ = ["BackendAuthClient", "LocalVerification", "UserContext", "parse_answer"]

# RFC 6750 §2.1 b64token: anything else cannot be sent in an Authorization header.
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN_CHARS = 16 * 1024
# Sessions keep the user's ids in columns of this width.
MAX_USER_FIELD_CHARS = 255
# 9999-12-31T23:59:59Z, the last second a datetime can hold.
LATEST_EXPIRY = 253402300799.0
_MAX_BODY_BYTES = 256 * 1024
_FIELD = "user_context_token"


@dataclass(frozen=True)
class UserContext:
    """Who the backend says the user is."""

    user_id: str
    tenant_id: str
    clearance_level: str
    permissions: frozenset[str]
    # Unix seconds the user's token stops being good, when known.
    expires_at: float | None
    workspaces: frozenset[str]


@dataclass(frozen=True)
class LocalVerification:
    """Verify user tokens as JWTs from this issuer before asking the backend."""

    issuer: str
    audience: str
    jwks_uri: str


class BackendAuthClient:
    """Asks the backend at ``url`` for user contexts, caching its answers briefly."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        *,
        timeout_seconds: float,
        cache_seconds: float,
        local: LocalVerification | None = None,
        jwks_min_refetch_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
        user_id_is_workspace: bool = False,
    ) -> None:
        self._http = http
        self._url = url
        self._user_id_is_workspace = user_id_is_workspace
        self._timeout_seconds = timeout_seconds
        self._cache_seconds = cache_seconds
        self._local = local
        self._jwks = JwksVerifier(
            http, timeout_seconds=timeout_seconds, min_refetch_seconds=jwks_min_refetch_seconds
        )
        self._clock = clock
        self._cache_size = cache_size
        # SHA-256 of a token -> (Unix seconds the entry is good until, answer), oldest use first.
        self._cache: OrderedDict[bytes, tuple[float, UserContext]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Task[UserContext]] = {}

    async def user_context(self, token: str) -> UserContext:
        """The user the token stands for, as the backend answers (or recently answered)."""
        if not token:
            raise ValidationFailed(f"{_FIELD} is required", field=_FIELD)
        if len(token) > MAX_TOKEN_CHARS or not BEARER_TOKEN.fullmatch(token):
            raise ValidationFailed(
                f"{_FIELD} must be a bearer token (RFC 6750 §2.1) of at most 16 KiB",
                field=_FIELD,
            )
        key = hashlib.sha256(token.encode()).digest()
        cached = self._cached(key)
        if cached is not None:
            BACKEND_AUTH_CACHE_HITS.inc()
            return cached
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._lookup(token, key))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._settled, key))
        # Shielded: one caller giving up must not cancel the lookup the others await.
        return await asyncio.shield(task)

    def _settled(self, key: bytes, task: asyncio.Task[UserContext]) -> None:
        del self._inflight[key]
        if not task.cancelled():
            task.exception()  # marks the error seen, as no waiter may be left to see it

    def _cached(self, key: bytes) -> UserContext | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        good_until, context = entry
        if self._clock() >= good_until:
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return context

    async def _lookup(self, token: str, key: bytes) -> UserContext:
        token_expiry: float | None
        if self._local is not None:
            token_expiry = await self._verify_locally(token, self._local)
        else:
            token_expiry = _unverified_exp(token)
        context = await self._ask_backend(token)
        if token_expiry is not None:
            expires_at = min(token_expiry, context.expires_at or math.inf, LATEST_EXPIRY)
            context = replace(context, expires_at=expires_at)
        now = self._clock()
        if context.expires_at is not None and context.expires_at <= now:
            raise UserTokenInvalid("the user context token has expired")
        limits = [now + self._cache_seconds, context.expires_at]
        good_until = min(limit for limit in limits if limit is not None)
        if self._cache_seconds > 0 and good_until > now:
            self._cache[key] = (good_until, context)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return context

    async def _verify_locally(self, token: str, local: LocalVerification) -> float:
        try:
            claims = await self._jwks.verify(
                token,
                jwks_uri=local.jwks_uri,
                issuer=local.issuer,
                audience=local.audience,
                require=("iss", "aud", "exp"),
            )
        except JwksUnavailable as exc:
            raise BackendAuthUnavailable(
                f"the user tokens' signing keys are unavailable: {exc}"
            ) from exc
        except JwtVerificationError as exc:
            raise UserTokenInvalid(f"the user context token is not valid: {exc}") from exc
        return float(claims["exp"])

    async def _ask_backend(self, token: str) -> UserContext:
        started = time.perf_counter()
        outcome = "unavailable"
        with outbound_span("GET BACKEND_AUTH_URL", "GET", self._url) as span:
            try:
                context = await self._ask_backend_once(token, span)
                outcome = "accepted"
                return context
            except UserTokenInvalid:
                outcome = "rejected"
                raise
            finally:
                span.set_attribute("nexus.outcome", outcome)
                BACKEND_AUTH_REQUESTS.labels(outcome).inc()
                BACKEND_AUTH_SECONDS.observe(time.perf_counter() - started)

    async def _ask_backend_once(self, token: str, span: Span) -> UserContext:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        # The backend is the operator's own: it may join the trace.
        pass_trace_context(headers)
        try:
            # httpx bounds each phase; this bounds the whole answer, however slowly it drips.
            async with asyncio.timeout(self._timeout_seconds):
                async with self._http.stream(
                    "GET",
                    self._url,
                    headers=headers,
                    timeout=httpx.Timeout(self._timeout_seconds),
                    follow_redirects=False,
                ) as response:
                    span.set_attribute("http.response.status_code", response.status_code)
                    if response.status_code in (401, 403):
                        raise UserTokenInvalid("the user context token was rejected by the backend")
                    if response.status_code != 200:
                        raise BackendAuthUnavailable(
                            f"the user backend answered HTTP {response.status_code}"
                        )
                    body = await _read_capped(response)
        except OutboundRefused as exc:
            raise BackendAuthUnavailable(f"the user backend was not called: {exc}") from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise BackendAuthUnavailable(
                f"the user backend did not answer within {self._timeout_seconds:g} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise BackendAuthUnavailable(
                f"the user backend could not be reached ({type(exc).__name__})"
            ) from exc
        return parse_answer(body, user_id_is_workspace=self._user_id_is_workspace)


async def _read_capped(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > _MAX_BODY_BYTES:
            raise BackendAuthUnavailable("the user backend's answer is larger than 256 KiB")
    return bytes(body)


def _unverified_exp(token: str) -> float | None:
    """A JWT's ``exp``, unverified: good only for shortening how long an answer is kept."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None  # an opaque token: only the backend knows when it expires
    exp = claims.get("exp")
    return float(exp) if _is_number(exp) else None


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_answer(body: bytes, *, user_id_is_workspace: bool = False) -> UserContext:
    """The contract's 200 body as a UserContext; ``BackendAuthUnavailable`` if it breaks it."""
    try:
        answer = parse_json(body)
    except ValueError as exc:
        raise BackendAuthUnavailable(f"the user backend's answer is not JSON: {exc}") from exc
    if not isinstance(answer, dict):
        raise BackendAuthUnavailable("the user backend's answer is not a JSON object")

    def malformed(rule: str) -> BackendAuthUnavailable:
        return BackendAuthUnavailable(f"the user backend's answer is malformed: {rule}")

    user_id = answer.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise malformed("user_id must be a non-empty string")
    permissions = answer.get("permissions")
    if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
        raise malformed("permissions must be a list of strings")
    # JSON null is read as an absent optional field.
    tenant_id = answer.get("tenant_id")
    tenant_id = "" if tenant_id is None else tenant_id
    if not isinstance(tenant_id, str):
        raise malformed("tenant_id must be a string")
    clearance = answer.get("clearance_level")
    clearance = "" if clearance is None else clearance
    if isinstance(clearance, bool) or not isinstance(clearance, str | int):
        raise malformed("clearance_level must be a string or an integer")
    expires_at = answer.get("expires_at")
    if expires_at is not None and not _is_number(expires_at):
        raise malformed("expires_at must be a number of Unix seconds")
    for name, value in (
        ("user_id", user_id),
        ("tenant_id", tenant_id),
        ("clearance_level", clearance),
    ):
        if len(str(value)) > MAX_USER_FIELD_CHARS:
            raise UserContextInvalid(
                f"the user backend's {name} for this user is longer than "
                f"{MAX_USER_FIELD_CHARS} characters; Nexus cannot act for them",
                field=name,
            )
    workspaces = answer.get("workspaces")
    workspaces = [] if workspaces is None else workspaces
    if not isinstance(workspaces, list) or not all(
        isinstance(w, str) and 0 < len(w) <= 255 for w in workspaces
    ):
        raise malformed("workspaces must be a list of workspace ids")
    return UserContext(
        user_id=user_id,
        tenant_id=tenant_id,
        clearance_level=str(clearance),
        permissions=frozenset(permissions),
        # Any later expiry is as good as none, and still a date every service can hold.
        expires_at=None if expires_at is None else min(float(expires_at), LATEST_EXPIRY),
        workspaces=frozenset([user_id, *workspaces] if user_id_is_workspace else workspaces),
    )
