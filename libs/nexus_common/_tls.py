"""TLS for the services' listeners and channels, with certificates from files.

Between the services it is mutual: a server asks every client for a certificate
signed by ``NEXUS_TLS_CA_FILE`` and refuses the handshake without one, and a client
checks that the server's certificate names the service it meant to reach (its DNS
SAN, e.g. ``broker``), wherever the address resolved to. The identity a server
acts on is the client certificate's SPIFFE ID, the URI SAN
``spiffe://nexus/<service>`` (``tools/devcerts`` makes such certificates).

The gateway's public listeners may have TLS of their own (``NEXUS_GATEWAY_TLS_*``):
their clients are agents, backends and browsers with keys, not certificates.

In production (``NEXUS_ENVIRONMENT``) a service refuses to start without its
certificates: in plaintext the internal token alone lets anyone on the pod
network claim any caller. ``NEXUS_ALLOW_PLAINTEXT=true`` says, explicitly, that
something else (a service mesh's mTLS) protects the hops.

Files are read once, at start: a rotated certificate takes a rolling restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc

from ._settings import ConfigError, Deployment, Env

__all__ = [
    "SERVICE_ID_PREFIX",
    "ServerTls",
    "ServiceTls",
    "peer_service",
]

SERVICE_ID_PREFIX = "spiffe://nexus/"


def _read(env: Env, name: str) -> bytes:
    path = Path(env.text(name))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path} ({exc.strerror})") from exc
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{name}: {path} holds no PEM data")
    return data


_PLAINTEXT_OPT_OUT = "NEXUS_ALLOW_PLAINTEXT"


def _configured(env: Env, names: tuple[str, ...], what: str) -> bool:
    """Whether TLS is configured by ``names``: all of them or none, and none only
    outside production unless the deployment opted out explicitly."""
    given = [name for name in names if env.text(name, "")]
    if given and len(given) != len(names):
        raise ConfigError(f"set all of {', '.join(names)} or none")
    if given:
        return True
    if env.deployment() == Deployment.PRODUCTION and not env.flag(_PLAINTEXT_OPT_OUT, False):
        raise ConfigError(
            f"NEXUS_ENVIRONMENT=production needs {what}: set {', '.join(names)}, or "
            f"{_PLAINTEXT_OPT_OUT}=true where something else (a service mesh) encrypts "
            "and authenticates these connections"
        )
    return False


@dataclass(frozen=True)
class ServiceTls:
    """This service's certificate and key, and the CA that signs every service's."""

    cert: bytes
    key: bytes = field(repr=False)
    ca: bytes

    _SETTINGS = ("NEXUS_TLS_CERT_FILE", "NEXUS_TLS_KEY_FILE", "NEXUS_TLS_CA_FILE")

    @classmethod
    def from_env(cls, env: Env) -> ServiceTls | None:
        """Mutual TLS when all three files are set; plaintext (``make run``) when none is."""
        if not _configured(env, cls._SETTINGS, "mutual TLS between the services"):
            return None
        cert, key, ca = (_read(env, name) for name in cls._SETTINGS)
        return cls(cert, key, ca)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel(
        self, service: str, target: str, options: list[tuple[str, str]]
    ) -> grpc.aio.Channel:
        """A channel that presents this service's certificate and accepts only a
        server whose certificate names ``service``."""
        credentials = grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        # The name checked is the service's, not the target's host: a target may
        # be an IP address or a headless Service's pod addresses.
        named = [*options, ("grpc.ssl_target_name_override", service)]
        return grpc.aio.secure_channel(target, credentials, options=named)


@dataclass(frozen=True)
class ServerTls:
    """A certificate for a listener whose clients present no certificate."""

    cert: bytes
    key: bytes = field(repr=False)
    # Where they were read from: an HTTP server loads them by path.
    cert_file: str = ""
    key_file: str = ""

    @classmethod
    def from_env(cls, env: Env, cert_setting: str, key_setting: str) -> ServerTls | None:
        names = (cert_setting, key_setting)
        if not _configured(env, names, "TLS on the public listeners"):
            return None
        cert, key = (_read(env, name) for name in names)
        return cls(cert, key, env.text(cert_setting), env.text(key_setting))

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)])


def peer_service(context: grpc.aio.ServicerContext) -> str | None:
    """The service the verified client certificate names, or None (plaintext,
    or a certificate with no Nexus identity)."""
    # gRPC sets peer_spiffe_id only from a certificate that chained to the CA
    # (the handshake fails otherwise), and not when it holds several URI SANs.
    ids = context.auth_context().get("peer_spiffe_id") or []
    if len(ids) != 1:
        return None
    spiffe_id = ids[0].decode(errors="replace")
    if not spiffe_id.startswith(SERVICE_ID_PREFIX):
        return None
    name = spiffe_id[len(SERVICE_ID_PREFIX) :]
    return name if name and "/" not in name else None
