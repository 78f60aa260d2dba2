"""Envoy on Kubernetes routes exactly like envoy/envoy.yaml, from a config generated from it,
that the real Envoy accepts with the flags the Deployment passes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import k8s
from tools import render_k8s_envoy as render_tool
from tools.devcerts import write_set


def _config(text: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def _listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = (li for li in config["static_resources"]["listeners"] if li["name"] == name)
    return found


def _clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def _validate(envoy: Path, config_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate`` with the Deployment's own flags, the descriptor taken from
    a copy of envoy/nexus.pb (the init container's job in the cluster)."""
    descriptor = tmp_path / "descriptor" / "nexus.pb"
    descriptor.parent.mkdir()
    shutil.copyfile(k8s.ROOT / "envoy" / "nexus.pb", descriptor)
    openapi = descriptor.parent / "openapi.json"
    shutil.copyfile(k8s.ROOT / "envoy" / "openapi.json", openapi)
    ca = write_set(tmp_path / "certs", ("gateway",)).pem
    (tmp_path / "ca.crt").write_bytes(ca)
    config = tmp_path / "envoy.yaml"
    config.write_text(
        config_text.replace(render_tool.DESCRIPTOR, str(descriptor))
        .replace(render_tool.OPENAPI, str(openapi))
        .replace(render_tool.GATEWAY_CA, str(tmp_path / "ca.crt"))
    )
    (container,) = k8s.pod("envoy").containers
    args = list(container["args"])
    args[args.index("-c") + 1] = str(config)
    return subprocess.run(
        [str(envoy), *args, "--mode", "validate"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_k8s_envoy_config_is_up_to_date_with_envoy_yaml() -> None:
    committed = render_tool.TARGET.read_text()
    assert committed == render_tool.render(render_tool.SOURCE.read_text()), (
        "deploy/k8s/envoy-config.yaml is stale: run .venv/bin/python tools/render_k8s_envoy.py"
    )


def test_k8s_envoy_config_passes_envoy_validate(envoy_binary: Path, tmp_path: Path) -> None:
    result = _validate(envoy_binary, render_tool.TARGET.read_text(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_validate_rejects_a_broken_config(envoy_binary: Path, tmp_path: Path) -> None:
    broken = render_tool.TARGET.read_text().replace("cluster: gateway_http", "cluster: nowhere")
    assert _validate(envoy_binary, broken, tmp_path).returncode != 0


def test_k8s_envoy_routes_exactly_like_the_dev_config() -> None:
    dev = _config(render_tool.SOURCE.read_text())
    cluster = _config(render_tool.TARGET.read_text())
    dev_listener, k8s_listener = _listener(dev, "nexus_http"), _listener(cluster, "nexus_http")
    assert k8s_listener["address"]["socket_address"] == {
        "address": "0.0.0.0",  # noqa: S104 - the pod's own address
        "port_value": render_tool.PUBLIC_PORT,
    }
    dev_filters = yaml.safe_dump(dev_listener["filter_chains"])
    k8s_filters = yaml.safe_dump(k8s_listener["filter_chains"])
    assert k8s_filters == dev_filters.replace("envoy/nexus.pb", render_tool.DESCRIPTOR).replace(
        "envoy/openapi.json", render_tool.OPENAPI
    )
    assert cluster["admin"] == dev["admin"]
    assert cluster["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert cluster["overload_manager"] == dev["overload_manager"]


def test_k8s_envoy_reaches_every_ready_gateway_pod_through_dns() -> None:
    dev, cluster = (
        _clusters(_config(render_tool.SOURCE.read_text())),
        _clusters(_config(render_tool.TARGET.read_text())),
    )
    assert set(cluster) == set(dev) | {"envoy_admin"}
    service = k8s.named("Service", render_tool.GATEWAY_HOST)
    assert service["spec"]["clusterIP"] == "None"
    gateway_ports = set(k8s.pod("gateway").container_ports().values())
    for name in dev:
        assert cluster[name]["type"] == "STRICT_DNS"
        (endpoint,) = cluster[name]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address["address"] == render_tool.GATEWAY_HOST
        assert address["port_value"] in {p["port"] for p in service["spec"]["ports"]}
        assert address["port_value"] in gateway_ports
        assert cluster[name]["dns_lookup_family"] == "V4_PREFERRED"
        # Both gateway clusters gain TLS, and nothing else of theirs changes.
        changed = {"type", "load_assignment", "dns_lookup_family", "transport_socket"}
        assert "transport_socket" not in dev[name]
        assert "transport_socket" in cluster[name]
        rest = {k: v for k, v in cluster[name].items() if k not in changed}
        assert rest == {k: v for k, v in dev[name].items() if k not in changed}


def test_only_readiness_and_metrics_of_the_admin_interface_leave_the_pod() -> None:
    config = _config(render_tool.TARGET.read_text())
    health = _listener(config, "envoy_health")
    assert health["address"]["socket_address"]["port_value"] == render_tool.HEALTH_PORT
    (chain,) = health["filter_chains"]
    (manager,) = chain["filters"]
    (host,) = manager["typed_config"]["route_config"]["virtual_hosts"]
    routes = {(r["match"]["path"], r["route"]["cluster"]) for r in host["routes"]}
    assert routes == {("/ready", "envoy_admin"), ("/stats/prometheus", "envoy_admin")}
    for route in host["routes"]:
        assert route["match"]["headers"] == [{"name": ":method", "string_match": {"exact": "GET"}}]
    admin = _clusters(config)["envoy_admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert admin[0]["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": render_tool.ADMIN_PORT,
    }
    ports = k8s.pod("envoy").container_ports()
    assert ports == {"http": render_tool.PUBLIC_PORT, "health": render_tool.HEALTH_PORT}


def test_the_envoy_pod_mounts_what_the_config_names() -> None:
    pod = k8s.pod("envoy")
    (container,) = pod.containers
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod.spec["volumes"]}
    config_path = Path(container["args"][container["args"].index("-c") + 1])
    (source,) = k8s.generator(volumes["config"]["configMap"]["name"])["files"]
    key, _, file = source.partition("=")
    assert (k8s.K8S / file) == render_tool.TARGET
    assert config_path == Path(mounts["config"]) / key
    descriptor = Path(render_tool.DESCRIPTOR)
    assert Path(mounts["descriptor"]) == descriptor.parent
    assert "emptyDir" in volumes["descriptor"]
    (copy,) = pod.init_containers
    assert copy["command"][0] == "cp" and copy["command"][-1] == f"{descriptor.parent}/"
    assert Path(render_tool.OPENAPI).parent == descriptor.parent
    assert {"name": "descriptor", "mountPath": str(descriptor.parent)} in copy["volumeMounts"]


def test_render_refuses_a_source_it_does_not_recognise() -> None:
    source = render_tool.SOURCE.read_text()
    with pytest.raises(ValueError, match="STATIC"):
        render_tool.render(source.replace("type: STATIC", "type: LOGICAL_DNS", 1))
    with pytest.raises(ValueError, match=r"nexus\.pb"):
        render_tool.render(source.replace("envoy/nexus.pb", "elsewhere.pb"))
