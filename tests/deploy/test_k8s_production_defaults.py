"""deploy/k8s runs with production's defaults: the manifests as kustomize renders them set
nothing that weakens a default a service would otherwise apply, and they turn mutual TLS on
for every service, each with its own certificate."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from tests.deploy import k8s

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")

Doc = dict[str, Any]
# A setting given as a Secret reference: its value is the operator's, not the manifests'.
FROM_SECRET = object()


@cache
def rendered() -> tuple[Doc, ...]:
    built = subprocess.run(
        ["kubectl", "kustomize", str(k8s.K8S)], capture_output=True, text=True, check=True
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(built) if doc)


def _config_maps() -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: d.get("data", {}) for d in rendered() if d["kind"] == "ConfigMap"
    }


def _pod_specs() -> dict[str, Doc]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for d in rendered()
        if d["kind"] in {"Deployment", "Job"}
    }


def effective_env(container: Doc) -> dict[str, Any]:
    """What a container's process sees: the ConfigMaps it takes whole, then its own env."""
    maps = _config_maps()
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        env[item["name"]] = item["value"] if "value" in item else FROM_SECRET
    return env


def service_containers() -> list[tuple[str, Doc]]:
    """(service, container) of every container that runs a Nexus service."""
    return [
        (service, container)
        for spec in _pod_specs().values()
        for container in spec.get("initContainers", []) + spec["containers"]
        if (service := k8s.service_of(container)) is not None
    ]


def _networks(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n.strip(), strict=False) for n in value.split(",") if n.strip()]


def _reaches_loopback_or_everything(value: str) -> bool:
    loopback = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    return any(
        network.prefixlen == 0
        or any(network.version == lo.version and network.overlaps(lo) for lo in loopback)
        for network in _networks(value)
    )


def _http_origin(value: str) -> bool:
    entries = [e.strip() for e in value.split(",") if e.strip()]
    return any(not e.startswith("https://") or e == "https://*" for e in entries)


# A setting, and what value of it would weaken the default a service applies without it.
# Absent is always fine: the defaults are production's.
WEAKENING: dict[str, Callable[[str], bool]] = {
    "NEXUS_ENVIRONMENT": lambda v: v.lower() != "production",
    "NEXUS_CONNECTION_CONFIRMATION": lambda v: v.lower() != "required",
    "NEXUS_AUTO_MIGRATE": lambda v: v.lower() in {"1", "true", "yes", "on"},
    "NEXUS_OUTBOUND_ALLOWED_NETWORKS": _reaches_loopback_or_everything,
    # Documented: the return URLs and the public URL are https in production.
    "NEXUS_RETURN_URL_ALLOWLIST": _http_origin,
    "NEXUS_PUBLIC_BASE_URL": lambda v: not v.startswith("https://"),
    "NEXUS_SESSION_ISSUER": lambda v: not v.startswith("https://"),
    "NEXUS_FORCED_REFRESH_INTERVAL_SECONDS": lambda v: float(v) <= 0,
    "NEXUS_JWKS_MIN_REFETCH_SECONDS": lambda v: float(v) <= 0,
    "NEXUS_CLOCK_SKEW_SECONDS": lambda v: float(v) > 300,
    "NEXUS_ALLOW_PLAINTEXT": lambda v: v.lower() in {"1", "true", "yes", "on"},
}


@pytest.mark.parametrize(
    ("service", "container"),
    service_containers(),
    ids=lambda x: x if isinstance(x, str) else x["name"],
)
def test_no_setting_weakens_a_production_default(service: str, container: Doc) -> None:
    env = effective_env(container)
    weakened = {
        name: env[name]
        for name, weakens in WEAKENING.items()
        if isinstance(env.get(name), str) and weakens(env[name])
    }
    assert not weakened, f"{container['name']} ({service}): {weakened}"


def test_the_weakening_rules_catch_what_they_name() -> None:
    """The table above can fail: each rule refuses the value that would weaken its default."""
    assert WEAKENING["NEXUS_ENVIRONMENT"]("development")
    assert WEAKENING["NEXUS_CONNECTION_CONFIRMATION"]("optional")
    assert WEAKENING["NEXUS_ALLOW_PLAINTEXT"]("true")
    assert WEAKENING["NEXUS_OUTBOUND_ALLOWED_NETWORKS"]("10.0.0.0/8,127.0.0.1/32")
    assert WEAKENING["NEXUS_OUTBOUND_ALLOWED_NETWORKS"]("0.0.0.0/0")
    assert not WEAKENING["NEXUS_OUTBOUND_ALLOWED_NETWORKS"]("10.20.0.0/16")
    assert WEAKENING["NEXUS_RETURN_URL_ALLOWLIST"]("https://app.example.com,http://localhost:*")
    assert not WEAKENING["NEXUS_RETURN_URL_ALLOWLIST"]("https://app.example.com")


TLS_SETTINGS = ("NEXUS_TLS_CERT_FILE", "NEXUS_TLS_KEY_FILE", "NEXUS_TLS_CA_FILE")


@pytest.mark.parametrize("service", k8s.SERVICES)
def test_every_service_runs_mutual_tls_with_its_own_certificate(service: str) -> None:
    spec = _pod_specs()[service]
    (container,) = spec["containers"]
    env = effective_env(container)
    assert all(isinstance(env.get(name), str) for name in TLS_SETTINGS), "mutual TLS is off"
    secrets = {
        volume["name"]: volume["secret"]["secretName"]
        for volume in spec.get("volumes", [])
        if "secret" in volume
    }
    mounts = {
        PurePosixPath(m["mountPath"]): m
        for m in container.get("volumeMounts", [])
        if m["name"] in secrets
    }
    for name in TLS_SETTINGS:
        path = PurePosixPath(env[name])
        (mount,) = (m for where, m in mounts.items() if where in path.parents)
        assert secrets[mount["name"]] == f"nexus-tls-{service}", f"{name}: another's Secret"
        assert mount["readOnly"] is True


def test_no_nexus_service_speaks_cleartext_http2_to_its_clients() -> None:
    for doc in rendered():
        if doc["kind"] == "Service" and doc["metadata"]["name"] != "envoy":
            for port in doc["spec"]["ports"]:
                assert port.get("appProtocol") != "kubernetes.io/h2c", doc["metadata"]["name"]


def test_the_example_tls_secrets_hold_no_values_and_name_what_the_pods_mount() -> None:
    examples = k8s.load(k8s.EXAMPLE_TLS)
    assert {doc["metadata"]["name"] for doc in examples} == {
        f"nexus-tls-{service}" for service in (*k8s.SERVICES, "envoy")
    }
    for doc in examples:
        assert "data" not in doc
        # Envoy holds the CA alone: it presents no certificate.
        keys = (
            {"ca.crt"}
            if doc["metadata"]["name"] == "nexus-tls-envoy"
            else {"tls.crt", "tls.key", "ca.crt"}
        )
        assert doc["stringData"] == dict.fromkeys(keys, "")
    assert not [d for d in rendered() if d["kind"] == "Secret"], "the base applies no Secret"
    mounted = {
        PurePosixPath(value).name
        for service in k8s.SERVICES
        for name, value in effective_env(_pod_specs()[service]["containers"][0]).items()
        if name in TLS_SETTINGS
    }
    assert mounted == {"tls.crt", "tls.key", "ca.crt"}


def test_envoy_reaches_the_gateway_over_tls_it_checks() -> None:
    (envoy_config,) = (
        yaml.safe_load(data["envoy.yaml"])
        for name, data in _config_maps().items()
        if name.startswith("envoy-config-")
    )
    (gateway,) = (c for c in envoy_config["static_resources"]["clusters"] if c["name"] == "gateway")
    context = gateway["transport_socket"]["typed_config"]
    validation = context["common_tls_context"]["validation_context"]
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "gateway"}}
    ]
    ca = PurePosixPath(validation["trusted_ca"]["filename"])
    spec = _pod_specs()["envoy"]
    (container,) = spec["containers"]
    (mount,) = (m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) in ca.parents)
    (volume,) = (v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "nexus-tls-envoy"
    gateway_env = effective_env(_pod_specs()["gateway"]["containers"][0])
    assert isinstance(gateway_env.get("NEXUS_GATEWAY_TLS_CERT_FILE"), str)
    assert isinstance(gateway_env.get("NEXUS_GATEWAY_TLS_KEY_FILE"), str)
