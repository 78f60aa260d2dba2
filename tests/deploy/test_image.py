"""The one image every Nexus container runs: built from pyproject.toml, non-root, and holding
what the manifests expect (the services' modules and Envoy's descriptor)."""

from __future__ import annotations

import fnmatch
import re

from tests.deploy import k8s

DOCKERFILE = (k8s.ROOT / "Dockerfile").read_text()


def _instructions(name: str) -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [
        line.split(None, 1)[1].strip()
        for line in joined.splitlines()
        if line.split(None, 1)[:1] == [name]
    ]


def _build_context() -> list[str]:
    """Patterns of .dockerignore, in order."""
    lines = (k8s.ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _in_context(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (the last matching pattern wins, as in Docker)."""
    kept = True
    for pattern in _build_context():
        negated = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/") or path == bare:
            kept = negated
    return kept


def test_image_is_python_311_slim_for_both_stages() -> None:
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim\S*$", DOCKERFILE, re.M)
    assert _instructions("FROM") == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_image_runs_as_the_non_root_user_the_pods_declare() -> None:
    (user,) = _instructions("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric, so runAsNonRoot can check it"
    for pod in k8s.pods():
        if pod.name == "envoy":
            continue
        assert pod.spec["securityContext"]["runAsUser"] == int(uid)
        assert pod.spec["securityContext"]["runAsGroup"] == int(gid)


def test_image_installs_the_project_from_pyproject_with_pip() -> None:
    assert any(re.search(r"pip install \.$", run) for run in _instructions("RUN"))
    assert "-e" not in " ".join(_instructions("RUN")).split()


def test_everything_the_image_copies_is_in_the_build_context() -> None:
    sources = [
        part
        for copy in _instructions("COPY")
        if not copy.startswith("--from")
        for part in copy.split()[:-1]
    ]
    assert {
        "pyproject.toml",
        "libs",
        "gen/python",
        "services",
        "envoy/nexus.pb",
        "envoy/openapi.json",
    } <= set(sources)
    for source in sources:
        assert (k8s.ROOT / source).exists(), source
        assert _in_context(source), f".dockerignore leaves out {source}"
    for private in (".venv", ".nexus-data", "node_modules", ".git", "tests"):
        assert not _in_context(private), f".dockerignore lets {private} into the image"


def test_image_holds_the_descriptor_where_envoys_init_container_copies_it_from() -> None:
    (copy,) = (c for c in _instructions("COPY") if c.startswith("envoy/nexus.pb "))
    destination = copy.split()[-1]
    (init,) = k8s.pod("envoy").init_containers
    assert init["command"][1] == destination
    (openapi,) = (c for c in _instructions("COPY") if c.startswith("envoy/openapi.json "))
    assert openapi.split()[-1] in init["command"]
    assert init["image"].startswith("nexus:")
