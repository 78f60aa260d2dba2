"""Reading deploy/k8s for the deploy tests: the kustomization, its documents, the pods they
run, and the settings each service reads (taken from the services' own settings modules)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
EXAMPLE_SECRET = K8S / "nexus-secrets.example.yaml"
# The services' certificates: one Secret each, named nexus-tls-<service>.
EXAMPLE_TLS = K8S / "nexus-tls.example.yaml"
TLS_MOUNT = "/etc/nexus/tls"
SECRET_NAME = "nexus-secrets"
CONFIG_NAME = "nexus-config"
SERVICES = ("gateway", "broker", "policy")

Doc = dict[str, Any]


@cache
def kustomization() -> Doc:
    return load(K8S / "kustomization.yaml")[0]


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resource_files() -> list[Path]:
    return [K8S / name for name in kustomization()["resources"]]


@cache
def documents() -> tuple[Doc, ...]:
    return tuple(doc for path in resource_files() for doc in load(path))


def of_kind(kind: str) -> list[Doc]:
    return [doc for doc in documents() if doc["kind"] == kind]


def named(kind: str, name: str) -> Doc:
    (doc,) = (doc for doc in of_kind(kind) if doc["metadata"]["name"] == name)
    return doc


def generator(name: str) -> Doc:
    (entry,) = (g for g in kustomization()["configMapGenerator"] if g["name"] == name)
    return entry


@cache
def config_env() -> dict[str, str]:
    """The settings ConfigMap, as kustomize builds it from its env file."""
    (env_file,) = generator(CONFIG_NAME)["envs"]
    values: dict[str, str] = {}
    for line in (K8S / env_file).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{env_file}: not KEY=VALUE: {line!r}"
            values[key] = value
    return values


@dataclass(frozen=True)
class Pod:
    """A Deployment's or Job's pod template."""

    kind: str
    name: str
    template: Doc

    @property
    def spec(self) -> Doc:
        return dict(self.template["spec"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.template["metadata"]["labels"])

    @property
    def containers(self) -> list[Doc]:
        return list(self.spec["containers"])

    @property
    def init_containers(self) -> list[Doc]:
        return list(self.spec.get("initContainers", []))

    @property
    def all_containers(self) -> list[Doc]:
        return self.init_containers + self.containers

    def container_ports(self) -> dict[str, int]:
        return {
            port.get("name", str(port["containerPort"])): port["containerPort"]
            for container in self.containers
            for port in container.get("ports", [])
        }


def pods() -> list[Pod]:
    return [
        Pod(doc["kind"], doc["metadata"]["name"], doc["spec"]["template"])
        for doc in documents()
        if doc["kind"] in {"Deployment", "Job"}
    ]


def pod(name: str) -> Pod:
    (found,) = (p for p in pods() if p.name == name)
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def service_of(container: Doc) -> str | None:
    """The Nexus service a container runs (``python -m nexus_<service> ...``), if any."""
    command = " ".join(container.get("command", []) + container.get("args", []))
    match = re.search(r"python -m nexus_(\w+)", command)
    return match.group(1) if match else None


def env_names(container: Doc) -> set[str]:
    """Every variable a container gets: its ``env`` and the ConfigMap it takes whole."""
    names = {item["name"] for item in container.get("env", [])}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == CONFIG_NAME
        names |= set(config_env())
    return names


def provided(container: Doc) -> set[str]:
    """The variables a container is sure to get (optional Secret keys are not)."""
    names = set(config_env()) if container.get("envFrom") else set()
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef", {})
        if "value" in item or (ref and not ref.get("optional", False)):
            names.add(item["name"])
    return names


# What the shared Env helpers in libs/nexus_common/_settings.py read, by the call that reads it.
_LIB_READS = {
    "internal_tokens()": {"NEXUS_INTERNAL_TOKEN", "NEXUS_INTERNAL_TOKEN_PREVIOUS"},
    "database_url(": {"DATABASE_URL"},
    "deployment()": {"NEXUS_ENVIRONMENT"},
    "ServiceTls.from_env(": {
        "NEXUS_TLS_CERT_FILE",
        "NEXUS_TLS_KEY_FILE",
        "NEXUS_TLS_CA_FILE",
        "NEXUS_ALLOW_PLAINTEXT",
        "NEXUS_ENVIRONMENT",
    },
}
_NAME = re.compile(r'"((?:NEXUS_|DATABASE_URL|BACKEND_AUTH_URL)[A-Z0-9_]*)"')


def _settings_source(service: str) -> str:
    return (ROOT / "services" / service / f"nexus_{service}" / "settings.py").read_text()


@cache
def settings_read(service: str) -> frozenset[str]:
    """Every environment variable a service's settings read."""
    lib = "".join(
        (ROOT / "libs" / "nexus_common" / module).read_text()
        for module in ("_settings.py", "_tls.py")
    )
    source = _settings_source(service)
    names = set(_NAME.findall(source))
    for call, lib_names in _LIB_READS.items():
        assert all(f'"{name}"' in lib for name in lib_names), f"libs no longer read {lib_names}"
        if call in source:
            names |= lib_names
    return frozenset(names)


@cache
def settings_required(service: str) -> tuple[frozenset[str], ...]:
    """The settings a service cannot start without, each as the names that may provide it."""
    source = _settings_source(service)
    required = [frozenset({name}) for name in re.findall(r'env\.text\(\s*"(\w+)"\s*\)', source)]
    if "internal_tokens()" in source:
        required.append(frozenset({"NEXUS_INTERNAL_TOKEN"}))
    for own in re.findall(r'env\.database_url\(\s*"(\w+)"\s*\)', source):
        required.append(frozenset({own, "DATABASE_URL"}))
    return tuple(required)
