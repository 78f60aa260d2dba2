"""The outbound policy's address rules, as a table and as properties (no I/O)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nexus_common import ConfigError, OutboundPolicy, address_class, parse_json

LOOPBACK = "127.0.0.0/8,::1/128"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("fd12:3456::1", "unique local"),
        ("fc00::1", "unique local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 (a destination, not a bind)
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        # IPv6 forms that reach an IPv4 address are judged by that address.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 of 169.254.169.254
        ("8.8.8.8", None),
        ("::ffff:8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_every_inward_address_class_is_named(address: str, kind: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == kind


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_is_refused_exactly_when_it_is_not_global_unicast(
    address: ipaddress.IPv4Address,
) -> None:
    # Python counts multicast as global; a provider endpoint never is.
    inward = address_class(address) is not None
    assert inward == (not address.is_global or address.is_multicast)


@given(st.ip_addresses(v=4))
def test_ipv4_mapped_forms_are_judged_as_their_ipv4_address(
    address: ipaddress.IPv4Address,
) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert address_class(mapped) == address_class(address)


@given(st.ip_addresses(v=6))
def test_unique_local_and_link_local_ipv6_are_never_global(
    address: ipaddress.IPv6Address,
) -> None:
    if address in ipaddress.ip_network("fc00::/7") or address.is_link_local:
        assert address_class(address) is not None


def _policy(allowed: str = "", denied: str = "", answers: Sequence[str] = ()) -> OutboundPolicy:
    async def resolve(host: str, port: int) -> Sequence[str]:
        return list(answers) or [host]

    policy = OutboundPolicy.parse(
        allowed_networks=allowed, denied_ports=denied, max_body_bytes=4096, deadline_seconds=1
    )
    return OutboundPolicy(
        policy.allowed_networks,
        policy.denied_ports,
        policy.max_body_bytes,
        policy.deadline_seconds,
        resolver=resolve,
    )


def test_the_default_allows_no_address_that_is_not_public() -> None:
    refusal = asyncio.run(_policy().url_refusal("https://127.0.0.1:9000/token"))
    assert refusal is not None and "loopback" in refusal


def test_an_allowlisted_network_is_reached_except_on_the_deployments_own_ports() -> None:
    policy = _policy(LOOPBACK, denied="9901")
    assert asyncio.run(policy.url_refusal("http://127.0.0.1:9000/token")) is None
    assert asyncio.run(policy.url_refusal("http://[::1]:9000/token")) is None
    refusal = asyncio.run(policy.url_refusal("http://127.0.0.1:9901/quitquitquit"))
    assert refusal is not None and "own listeners" in refusal
    refusal = asyncio.run(policy.url_refusal("https://10.0.0.1/token"))
    assert refusal is not None and "private" in refusal


def test_every_address_a_name_resolves_to_is_checked() -> None:
    policy = _policy(answers=["93.184.216.34", "10.0.0.7"])
    refusal = asyncio.run(policy.url_refusal("https://mixed.example/token"))
    assert refusal is not None and "mixed.example (10.0.0.7)" in refusal


def test_plain_http_reaches_only_allowlisted_networks() -> None:
    refusal = asyncio.run(_policy(answers=["93.184.216.34"]).url_refusal("http://x.example/t"))
    assert refusal is not None and "https only" in refusal
    assert (
        asyncio.run(_policy(answers=["93.184.216.34"]).url_refusal("https://x.example/t")) is None
    )


@pytest.mark.parametrize(
    ("allowed", "denied", "size"),
    [("127.0.0.1/33", "", 4096), ("localhost", "", 4096), ("", "99999", 4096), ("", "", 10)],
)
def test_malformed_settings_are_config_errors(allowed: str, denied: str, size: int) -> None:
    with pytest.raises(ConfigError):
        OutboundPolicy.parse(
            allowed_networks=allowed, denied_ports=denied, max_body_bytes=size, deadline_seconds=1
        )


@pytest.mark.parametrize(
    "body",
    [b'{"exp": NaN}', b'{"exp": Infinity}', b"[-Infinity]", b"[" * 100_000 + b"]" * 100_000],
    ids=["NaN", "Infinity", "-Infinity", "deep"],
)
def test_third_party_json_that_is_not_rfc_8259_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_json(body)


def test_third_party_json_is_read() -> None:
    assert parse_json(b'{"keys": [{"kid": "a", "n": 1.5}]}') == {"keys": [{"kid": "a", "n": 1.5}]}
