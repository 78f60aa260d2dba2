"""A throwaway certificate authority for mutual TLS between the services.

    python -m tools.devcerts DIR [--dns NAME ...] [--days N]

writes ``ca.pem`` and, for each of gateway, broker and policy, ``<service>.pem`` and
``<service>-key.pem``. Each certificate names its service twice: as the URI SAN
``spiffe://nexus/<service>``, the identity a server reads from its peer (and checks against
the service's method allowlist), and as the DNS SAN ``<service>``, which a client checks the
server against. ``--dns`` adds names to every certificate (the Kubernetes Services' full names,
say). The CA's private key is not written: to issue more, make a new set.

For development and tests only. A production CA is yours to run (cert-manager, Vault PKI, your
own offline CA); its certificates need the same two SANs.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SERVICES", "Authority", "main", "write_set"]

SERVICES = ("gateway", "broker", "policy")
SERVICE_URI_PREFIX = "spiffe://nexus/"
# Tests and `make run` reach the services on loopback.
_LOOPBACK_NAMES = ("localhost",)
_LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class Issued:
    cert: bytes
    key: bytes


class Authority:
    """A self-signed CA held in memory, issuing service certificates."""

    def __init__(self, name: str = "Nexus development CA", days: int = 365) -> None:
        self._key = _key()
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._days = days
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, service: str, dns: tuple[str, ...] = ()) -> Issued:
        """A certificate for ``service``, valid as server and as client."""
        key = _key()
        now = datetime.now(UTC)
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(SERVICE_URI_PREFIX + service),
            *(x509.DNSName(name) for name in (service, *dns, *_LOOPBACK_NAMES)),
            *(x509.IPAddress(ipaddress.ip_address(a)) for a in _LOOPBACK_ADDRESSES),
        ]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=self._days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem(key))


def write_set(
    directory: Path,
    services: tuple[str, ...] = SERVICES,
    dns: tuple[str, ...] = (),
    days: int = 365,
) -> Authority:
    """Write ``ca.pem`` and each service's certificate and key into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = Authority(days=days)
    (directory / "ca.pem").write_bytes(authority.pem)
    for service in services:
        issued = authority.issue(service, dns)
        (directory / f"{service}.pem").write_bytes(issued.cert)
        key_file = directory / f"{service}-key.pem"
        key_file.touch(mode=0o600)
        key_file.write_bytes(issued.key)
    return authority


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--dns", action="append", default=[], help="another DNS SAN, repeatable")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--service", action="append", help="only these services (repeatable)")
    args = parser.parse_args(argv)
    services = tuple(args.service) if args.service else SERVICES
    write_set(args.directory, services, tuple(args.dns), args.days)
    print(f"wrote ca.pem and {', '.join(services)} certificates to {args.directory}")


if __name__ == "__main__":
    main()
