"""deploy/k8s is what an operator applies: it must be valid Kubernetes, hardened, highly
available, wired to the ports and settings the services really use, and never migrate
from more than one place."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy import k8s
from tests.deploy.k8s import Doc, Pod

# The oldest Kubernetes the manifests support (grpc probes, matchLabelKeys, nodeTaintsPolicy
# and unhealthyPodEvictionPolicy are all on by default there), and the newest the pinned
# kubernetes-validate knows.
KUBERNETES_VERSION = "1.30.0"
KUBERNETES_VERSIONS = (KUBERNETES_VERSION, "1.37.0")

PROJECT_VERSION = tomllib.loads((k8s.ROOT / "pyproject.toml").read_text())["project"]["version"]
NEXUS_IMAGE = f"nexus:{PROJECT_VERSION}"


def _every_document() -> list[Any]:
    return [
        pytest.param(doc, id=f"{path.name}:{doc['kind']}/{doc['metadata']['name']}")
        for path in [*k8s.resource_files(), k8s.EXAMPLE_SECRET, k8s.EXAMPLE_TLS]
        for doc in k8s.load(path)
    ]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", _every_document())
def test_every_manifest_is_valid_for_the_kubernetes_schema(doc: Doc, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(item) for item in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")


def test_a_manifest_with_an_unknown_field_is_rejected() -> None:
    """The schema check above can fail: strict validation refuses a misspelt field."""
    deployment = yaml.safe_load(yaml.safe_dump(k8s.named("Deployment", "broker")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_example_secrets() -> None:
    listed = {path.name for path in k8s.resource_files()}
    generated = {
        source.partition("=")[2] or source
        for entry in k8s.kustomization()["configMapGenerator"]
        for source in entry.get("files", []) + entry.get("envs", [])
    }
    on_disk = {path.relative_to(k8s.K8S).as_posix() for path in k8s.K8S.rglob("*.yaml")}
    examples = {k8s.EXAMPLE_SECRET.name, k8s.EXAMPLE_TLS.name}
    assert not examples & (listed | generated)
    missing = on_disk - listed - generated - {"kustomization.yaml"} - examples
    assert not missing, f"not in kustomization.yaml: {sorted(missing)}"
    for name in listed | generated:
        assert (k8s.K8S / name).is_file(), f"kustomization.yaml names a missing file {name}"
    assert k8s.kustomization()["namespace"] == "nexus"
    assert [d["metadata"]["name"] for d in k8s.of_kind("Namespace")] == ["nexus"]


def test_no_secret_is_applied_and_the_example_holds_no_values() -> None:
    assert not k8s.of_kind("Secret")
    (example,) = k8s.load(k8s.EXAMPLE_SECRET)
    assert example["metadata"]["name"] == k8s.SECRET_NAME
    assert "data" not in example
    assert all(value == "" for value in example["stringData"].values())
    referenced = {
        item["valueFrom"]["secretKeyRef"]["key"]
        for pod in k8s.pods()
        for container in pod.all_containers
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert referenced == set(example["stringData"])
    for pod in k8s.pods():
        for container in pod.all_containers:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == k8s.SECRET_NAME
                    assert item["name"] == ref["key"], "a secret keeps its variable's name"


def test_the_settings_configmap_holds_no_secret() -> None:
    secret_keys = set(k8s.load(k8s.EXAMPLE_SECRET)[0]["stringData"])
    assert not secret_keys & set(k8s.config_env())
    assert not {key for key in k8s.config_env() if re.search(r"KEY|TOKEN|SECRET|PASSWORD", key)}


# -- every pod ----------------------------------------------------------------------------


@pytest.mark.parametrize("pod", k8s.pods(), ids=lambda p: p.name)
def test_every_pod_runs_hardened(pod: Pod) -> None:
    spec = pod.spec
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] > 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "nexus"
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec)
    for container in pod.all_containers:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert context.get("privileged", False) is False
        assert context.get("runAsUser", 1) > 0 and context.get("runAsNonRoot", True) is True
        assert not any(port.get("hostPort") for port in container.get("ports", []))
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            # Only a service's own certificate, and read-only.
            assert volume["secret"]["secretName"] == f"nexus-tls-{pod.name}", volume["name"]
            mounts = [m for c in pod.all_containers for m in c.get("volumeMounts", [])]
            assert all(m["readOnly"] for m in mounts if m["name"] == volume["name"])
            continue
        assert {"emptyDir", "configMap"} & set(volume), f"{volume['name']}: unexpected volume"


@pytest.mark.parametrize("pod", k8s.pods(), ids=lambda p: p.name)
def test_every_container_has_requests_and_limits(pod: Pod) -> None:
    for container in pod.all_containers:
        resources = container["resources"]
        assert set(resources["requests"]) == {"cpu", "memory"}, container["name"]
        assert set(resources["limits"]) == {"cpu", "memory"}, container["name"]


@pytest.mark.parametrize("pod", k8s.pods(), ids=lambda p: p.name)
def test_nexus_containers_run_this_version_of_the_nexus_image(pod: Pod) -> None:
    for container in pod.all_containers:
        if container["image"].startswith("envoyproxy/"):
            continue
        assert container["image"] == NEXUS_IMAGE, container["name"]
        assert container["imagePullPolicy"] == "IfNotPresent"
    (entry,) = k8s.kustomization()["images"]
    assert entry == {"name": "nexus", "newTag": PROJECT_VERSION}


def test_envoy_runs_the_envoy_release_the_tests_use(envoy_version: str) -> None:
    (container,) = k8s.pod("envoy").containers
    assert container["image"] == f"envoyproxy/envoy:v{envoy_version}"


# -- deployments --------------------------------------------------------------------------


def _deployments() -> list[Doc]:
    return k8s.of_kind("Deployment")


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["metadata"]["name"])
def test_every_deployment_is_replicated_and_spread_over_nodes(deployment: Doc) -> None:
    spec = deployment["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    by_key = {c["topologyKey"]: c for c in spec["template"]["spec"]["topologySpreadConstraints"]}
    hostname = by_key["kubernetes.io/hostname"]
    assert hostname["whenUnsatisfiable"] == "DoNotSchedule"
    assert hostname["maxSkew"] == 1
    assert k8s.selects(hostname["labelSelector"]["matchLabels"], labels)
    assert hostname["matchLabelKeys"] == ["pod-template-hash"]


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["metadata"]["name"])
def test_every_deployment_has_a_disruption_budget(deployment: Doc) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budgets = [
        pdb
        for pdb in k8s.of_kind("PodDisruptionBudget")
        if k8s.selects(pdb["spec"]["selector"]["matchLabels"], labels)
    ]
    assert len(budgets) == 1
    assert budgets[0]["spec"]["minAvailable"] == 1 < deployment["spec"]["replicas"]


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["metadata"]["name"])
def test_every_deployment_has_a_service(deployment: Doc) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert any(k8s.selects(s["spec"]["selector"], labels) for s in k8s.of_kind("Service"))


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: d["metadata"]["name"])
def test_every_deployment_probes_readiness_and_liveness(deployment: Doc) -> None:
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        assert "readinessProbe" in container and "livenessProbe" in container


@pytest.mark.parametrize("service", k8s.SERVICES)
def test_services_are_probed_on_the_plaintext_health_port(service: str) -> None:
    pod = k8s.pod(service)
    (container,) = pod.containers
    port = pod.container_ports()["health"]
    assert k8s.config_env()["NEXUS_HEALTH_LISTEN"] == f"0.0.0.0:{port}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": port}, probe


def test_envoy_is_probed_on_its_readiness_endpoint() -> None:
    (container,) = k8s.pod("envoy").containers
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ready", "port": "health"}
    assert "health" in k8s.pod("envoy").container_ports()


@pytest.mark.parametrize(
    "pod", [p for p in k8s.pods() if p.kind == "Deployment"], ids=lambda p: p.name
)
def test_termination_grace_outlasts_the_pause_and_the_shutdown_grace(pod: Pod) -> None:
    grace = float(k8s.config_env()["NEXUS_SHUTDOWN_GRACE_SECONDS"])
    for container in pod.containers:
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pause = float(command[1])
        shutdown = grace if k8s.service_of(container) else 0.0
        assert pod.spec["terminationGracePeriodSeconds"] >= pause + shutdown + 5


# -- ports, Services and NetworkPolicies --------------------------------------------------


def _pods_selected(selector: dict[str, str]) -> list[Pod]:
    return [p for p in k8s.pods() if p.kind == "Deployment" and k8s.selects(selector, p.labels)]


@pytest.mark.parametrize("service", k8s.of_kind("Service"), ids=lambda s: s["metadata"]["name"])
def test_every_service_port_targets_a_container_port(service: Doc) -> None:
    selected = _pods_selected(service["spec"]["selector"])
    assert len(selected) == 1, "a Service selects exactly one workload"
    ports = selected[0].container_ports()
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        if isinstance(target, str):
            assert target in ports, f"no container port named {target}"
            assert ports[target] == port["port"], "Service and container use the same number"
        else:
            assert target in ports.values()


def test_listen_addresses_bind_the_pod_on_its_container_port() -> None:
    env = k8s.config_env()
    listens = {
        "gateway": [
            "NEXUS_GATEWAY_LISTEN",
            "NEXUS_GATEWAY_HTTP_LISTEN",
            "NEXUS_METRICS_LISTEN",
            "NEXUS_HEALTH_LISTEN",
        ],
        "broker": ["NEXUS_BROKER_LISTEN", "NEXUS_METRICS_LISTEN", "NEXUS_HEALTH_LISTEN"],
        "policy": ["NEXUS_POLICY_LISTEN", "NEXUS_METRICS_LISTEN", "NEXUS_HEALTH_LISTEN"],
    }
    for service, names in listens.items():
        ports = set(k8s.pod(service).container_ports().values())
        bound = set()
        for name in names:
            host, _, port = env[name].rpartition(":")
            assert host == "0.0.0.0", name  # noqa: S104 - the pod's own address
            bound.add(int(port))
        assert bound == ports, service


@pytest.mark.parametrize(
    ("setting", "service"), [("NEXUS_BROKER_TARGET", "broker"), ("NEXUS_POLICY_TARGET", "policy")]
)
def test_targets_resolve_every_pod_of_the_service(setting: str, service: str) -> None:
    # gRPC's DNS resolver and a headless Service: the client sees each pod, where a
    # ClusterIP would hide them behind one address and one long-lived connection.
    scheme, _, address = k8s.config_env()[setting].partition(":///")
    assert scheme == "dns", setting
    host, _, port = address.rpartition(":")
    front = k8s.named("Service", host)
    assert front["spec"].get("clusterIP") == "None", "a headless Service"
    assert k8s.selects(front["spec"]["selector"], k8s.pod(service).labels)
    assert int(port) in {p["port"] for p in front["spec"]["ports"]}


NEXUS_NS = {"kubernetes.io/metadata.name": "nexus"}
AGENTS_NS = {"kubernetes.io/metadata.name": "agents", "nexus.dev/gateway-client": "true"}
OTHER_NS = {"kubernetes.io/metadata.name": "elsewhere"}
SCRAPER = ({"kubernetes.io/metadata.name": "monitoring", "nexus.dev/metrics-scraper": "true"}, {})


def _policies_for(labels: dict[str, str]) -> list[Doc]:
    return [
        policy
        for policy in k8s.of_kind("NetworkPolicy")
        if k8s.selects(policy["spec"]["podSelector"].get("matchLabels", {}), labels)
    ]


def _peer_admits(peer: Doc, source: tuple[dict[str, str], dict[str, str]]) -> bool:
    namespace_labels, pod_labels = source
    if "namespaceSelector" in peer:
        wanted = peer["namespaceSelector"].get("matchLabels", {})
        namespace_match = k8s.selects(wanted, namespace_labels)
    else:
        namespace_match = namespace_labels == NEXUS_NS
    pod_match = k8s.selects(peer.get("podSelector", {}).get("matchLabels", {}), pod_labels)
    return namespace_match and pod_match and "ipBlock" not in peer


def _admitted(source: tuple[dict[str, str], dict[str, str]], target: str, port: int) -> bool:
    """Whether the NetworkPolicies let ``source`` (namespace labels, pod labels) reach the
    pods of ``target`` on ``port``."""
    policies = [
        policy
        for policy in _policies_for(k8s.pod(target).labels)
        if "Ingress" in policy["spec"]["policyTypes"]
    ]
    if not policies:
        return True
    return any(
        any(_peer_admits(peer, source) for peer in rule.get("from", [{"namespaceSelector": {}}]))
        and any(p["port"] == port for p in rule.get("ports", [{"port": port}]))
        for policy in policies
        for rule in policy["spec"].get("ingress", [])
    )


def _in_nexus(name: str) -> tuple[dict[str, str], dict[str, str]]:
    return NEXUS_NS, k8s.pod(name).labels


FLOWS = [
    # (from, to, port, admitted)
    ((OTHER_NS, {}), "envoy", 8080, True),
    ((OTHER_NS, {}), "envoy", 9902, False),
    ((OTHER_NS, {}), "envoy", 9901, False),
    (_in_nexus("envoy"), "gateway", 50051, True),
    (_in_nexus("envoy"), "gateway", 8081, True),
    ((AGENTS_NS, {"app": "agent"}), "gateway", 50051, True),
    ((AGENTS_NS, {"app": "agent"}), "gateway", 8081, False),
    ((OTHER_NS, {}), "gateway", 50051, False),
    (_in_nexus("gateway"), "broker", 50061, True),
    (_in_nexus("policy"), "broker", 50061, True),
    (_in_nexus("envoy"), "broker", 50061, False),
    (_in_nexus("nexus-migrate"), "broker", 50061, False),
    ((AGENTS_NS, {}), "broker", 50061, False),
    (_in_nexus("gateway"), "policy", 50071, True),
    (_in_nexus("broker"), "policy", 50071, True),
    (_in_nexus("envoy"), "policy", 50071, False),
    ((OTHER_NS, {}), "policy", 50071, False),
    (_in_nexus("broker"), "gateway", 50051, False),
    *[(SCRAPER, name, 9090, True) for name in ("gateway", "broker", "policy")],
    (SCRAPER, "envoy", 9902, True),
    (SCRAPER, "broker", 50061, False),
    (SCRAPER, "envoy", 9901, False),
    ((OTHER_NS, {}), "broker", 9090, False),
    ((AGENTS_NS, {}), "policy", 9090, False),
]


@pytest.mark.parametrize(("source", "target", "port", "admitted"), FLOWS)
def test_network_policies_admit_only_the_paths_nexus_uses(
    source: tuple[dict[str, str], dict[str, str]], target: str, port: int, admitted: bool
) -> None:
    assert _admitted(source, target, port) is admitted


def test_ingress_is_denied_by_default_and_policies_name_real_ports() -> None:
    assert any(
        policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
        for policy in k8s.of_kind("NetworkPolicy")
    )
    for policy in k8s.of_kind("NetworkPolicy"):
        selector = policy["spec"]["podSelector"].get("matchLabels")
        if not selector:
            continue
        pods = _pods_selected(selector)
        assert pods, policy["metadata"]["name"]
        for pod in pods:
            for rule in policy["spec"]["ingress"]:
                for port in rule["ports"]:
                    assert port["port"] in pod.container_ports().values(), policy["metadata"][
                        "name"
                    ]


# -- settings -----------------------------------------------------------------------------


def test_every_shared_setting_is_read_by_a_service() -> None:
    read = set().union(*(k8s.settings_read(service) for service in k8s.SERVICES))
    unknown = set(k8s.config_env()) - read
    assert not unknown, f"no service reads {sorted(unknown)}"


@pytest.mark.parametrize("pod", k8s.pods(), ids=lambda p: p.name)
def test_every_variable_a_container_sets_is_read_by_its_service(pod: Pod) -> None:
    for container in pod.all_containers:
        names = {item["name"] for item in container.get("env", [])}
        service = k8s.service_of(container)
        if service is None:
            assert not names and not container.get("envFrom"), container["name"]
            continue
        unknown = names - k8s.settings_read(service)
        assert not unknown, f"{container['name']}: nexus_{service} does not read {unknown}"


def test_every_setting_in_the_manifests_is_documented() -> None:
    readme = (k8s.ROOT / "README.md").read_text()
    names = set(k8s.config_env()) | {
        item["name"] for pod in k8s.pods() for c in pod.all_containers for item in c.get("env", [])
    }
    undocumented = {name for name in names if f"`{name}`" not in readme}
    assert not undocumented, f"not in README's configuration table: {sorted(undocumented)}"


@pytest.mark.parametrize("service", k8s.SERVICES)
def test_every_required_setting_reaches_the_service(service: str) -> None:
    (container,) = k8s.pod(service).containers
    given = k8s.provided(container)
    for names in k8s.settings_required(service):
        assert names & given, f"{service} needs one of {sorted(names)}"


def test_the_required_settings_are_the_documented_ones() -> None:
    """settings_required() reads the settings modules; make sure it still finds them."""
    required = {n for s in k8s.SERVICES for names in k8s.settings_required(s) for n in names}
    assert required >= {
        "NEXUS_ADMIN_API_KEYS",
        "NEXUS_INTERNAL_TOKEN",
        "NEXUS_KEYRING",
        "NEXUS_STATE_KEY",
        "DATABASE_URL",
    }


# -- migrations ---------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["broker", "policy"])
def test_replicas_never_migrate_and_wait_for_the_schema(service: str) -> None:
    pod = k8s.pod(service)
    (container,) = pod.containers
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    assert env["NEXUS_AUTO_MIGRATE"] == "false"
    assert k8s.config_env().get("NEXUS_AUTO_MIGRATE", "false") == "false"
    (wait,) = pod.init_containers
    assert f"python -m nexus_{service} migrate --check" in " ".join(wait["command"])
    # The run-time role reads the schema's version; the migration role is the Job's alone.
    own_url = f"NEXUS_{service.upper()}_DATABASE_URL"
    assert {own_url} <= k8s.provided(wait) and {own_url} <= k8s.provided(container)
    assert "DATABASE_URL" not in k8s.env_names(wait) | k8s.env_names(container)
    assert k8s.config_env()[f"NEXUS_{service.upper()}_DATABASE_ROLE"] == f"nexus_{service}"


def test_gateway_and_envoy_have_no_database() -> None:
    for name in ("gateway", "envoy"):
        for container in k8s.pod(name).all_containers:
            assert not {
                "DATABASE_URL",
                "NEXUS_BROKER_DATABASE_URL",
                "NEXUS_POLICY_DATABASE_URL",
                "NEXUS_KEYRING",
            } & k8s.env_names(container)


def test_one_job_runs_every_migration_one_after_the_other() -> None:
    (job,) = k8s.of_kind("Job")
    pod = k8s.pod(job["metadata"]["name"])
    steps = [c["command"] for c in pod.all_containers]
    assert steps == [
        ["python", "-m", "nexus_broker", "migrate"],
        ["python", "-m", "nexus_policy", "migrate"],
    ]
    assert job["spec"].get("parallelism", 1) == 1 and job["spec"].get("completions", 1) == 1
    for container in pod.all_containers:
        assert k8s.provided(container) & {"DATABASE_URL"}
        secrets = {i["name"] for i in container.get("env", []) if "valueFrom" in i}
        assert secrets == {"DATABASE_URL"}, "the Job gets no secret but the database URL"


# -- kustomize (when kubectl is installed) ------------------------------------------------


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_valid_manifests_with_generated_configmaps() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(k8s.K8S)], capture_output=True, text=True, check=True
    ).stdout
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(built) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "nexus"
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    (settings,) = (m for n, m in maps.items() if n.startswith(f"{k8s.CONFIG_NAME}-"))
    assert settings["data"] == k8s.config_env()
    (envoy_config,) = (m for n, m in maps.items() if n.startswith("envoy-config-"))
    (source,) = k8s.generator("envoy-config")["files"]
    key, _, path = source.partition("=")
    assert envoy_config["data"][key] == (k8s.K8S / path).read_text()
    for doc in docs:
        if doc["kind"] not in {"Deployment", "Job"}:
            continue
        pod_spec = doc["spec"]["template"]["spec"]
        for container in pod_spec.get("initContainers", []) + pod_spec["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == settings["metadata"]["name"]
        for volume in pod_spec.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] == envoy_config["metadata"]["name"]
