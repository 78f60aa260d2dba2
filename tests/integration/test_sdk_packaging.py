"""The SDKs install alone, as an agent's project gets them.

Python: a wheel is built from a copy of ``libs/nexus_sdk`` (so nothing else in
the repository can leak into it) and installed into fresh virtualenvs, with
dependencies from the package index as an agent's ``pip install`` gets them.
What is expected is derived, not listed: httpx's own dependency closure, and
none of the packages the server's ``pyproject.toml`` requires.

TypeScript: ``npm pack`` of ``sdk/typescript`` (its ``prepack`` builds it),
installed into a fresh npm project, which gets that one package and types a
strict compiler accepts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "libs" / "nexus_sdk"
TS_SDK = ROOT / "sdk" / "typescript"
TSC = TS_SDK / "node_modules" / ".bin" / "tsc"
# An agent's code as the docs write it, with the types it relies on spelled out.
TS_CONSUMER = """\
import { NexusAuthError, NexusClient, type AgentSession } from '@nexus-broker/sdk';

const nexus = new NexusClient({ gatewayUrl: 'http://127.0.0.1:1', agentKey: 'k' });
try {
  const session: AgentSession = await nexus.requestAgentSession({
    agentId: 'crm-agent',
    provider: 'salesforce',
    scopes: ['crm:contacts:read'],
    ttl: 900,
  });
  const expiresAt: number = session.expiresAt;
  const bearer: string = `Bearer ${session.accessToken}`;
  await nexus.closeAgentSession(session.sessionId);
  console.log(expiresAt, bearer.length);
} catch (error) {
  if (error instanceof NexusAuthError) {
    const status: number | null = error.status;
    const reason: string | null = error.reason;
    console.log(status, reason, error.message, error.metadata);
  }
}
"""


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(arg) for arg in argv], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("sdk")
    source = work / "nexus_sdk"
    shutil.copytree(SDK, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = work / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, source)
    (built,) = dist.glob("nexus_sdk-*.whl")
    return built


def fresh_python(where: Path) -> Path:
    venv.create(where, with_pip=True)
    return where / "bin" / "python"


def installed(python: Path) -> set[str]:
    listing = run(python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check")
    return {canonicalize_name(entry["name"]) for entry in json.loads(listing)}


def install(python: Path, target: str) -> set[str]:
    """What ``pip install target`` adds to the virtualenv."""
    before = installed(python)
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", target)
    return installed(python) - before


def runtime_closure(name: str) -> set[str]:
    """``name`` and what it needs at run time on this interpreter, extras left out."""
    seen: set[str] = set()
    todo = [canonicalize_name(name)]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for line in metadata.requires(current) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def server_packages() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(line).name) for line in project["dependencies"]}


def python_says(python: Path, code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # Run outside the repository so that its copy of nexus_sdk cannot be imported instead.
    return subprocess.run(
        [str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_the_sdk_brings_only_httpx_and_what_httpx_needs(wheel: Path, tmp_path: Path) -> None:
    python = fresh_python(tmp_path / "agent")

    added = install(python, str(wheel))

    assert added == {"nexus-sdk"} | runtime_closure("httpx")
    assert not added & (server_packages() - {"httpx"})
    works = python_says(
        python,
        "import nexus_sdk, pathlib;"
        "from nexus_sdk import NexusClient, NexusClientOptions;"
        "NexusClient(NexusClientOptions(gateway_url='http://127.0.0.1:1', agent_key='k')).close();"
        "assert pathlib.Path(nexus_sdk.__file__).parent.joinpath('py.typed').is_file();"
        "print(nexus_sdk.__file__)",
        tmp_path,
    )
    assert works.returncode == 0, works.stderr
    assert works.stdout.startswith(str(tmp_path / "agent"))


@pytest.mark.parametrize("extra", ["bridge", "mcp"])
def test_a_module_needing_an_extra_names_the_extra_when_it_is_missing(
    extra: str, wheel: Path, tmp_path: Path
) -> None:
    python = fresh_python(tmp_path / "agent")
    install(python, str(wheel))

    missing = python_says(python, f"import nexus_sdk.{extra}", tmp_path)

    assert missing.returncode != 0
    assert f"pip install 'nexus-sdk[{extra}]'" in missing.stderr


def test_the_extras_bring_what_their_modules_import(wheel: Path, tmp_path: Path) -> None:
    python = fresh_python(tmp_path / "agent")

    added = install(python, f"nexus-sdk[bridge,mcp] @ {wheel.as_uri()}")

    assert {"grpcio", "websockets", "prometheus-client", "mcp"} <= added
    assert not added & {"sqlalchemy", "alembic", "psycopg", "aiosqlite", "uvloop", "grpcio-status"}
    works = python_says(python, "import nexus_sdk.bridge, nexus_sdk.mcp", tmp_path)
    assert works.returncode == 0, works.stderr


def test_the_typescript_sdk_installs_alone_with_types_a_strict_compiler_checks(
    tmp_path: Path,
) -> None:
    run("npm", "pack", "--silent", "--pack-destination", tmp_path, cwd=TS_SDK)
    (tarball,) = tmp_path.glob("nexus-broker-sdk-*.tgz")
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "package.json").write_text('{"name": "agent", "private": true, "type": "module"}')

    run("npm", "install", "--no-audit", "--no-fund", tarball, cwd=agent)

    modules = agent / "node_modules"
    assert [p.name for p in modules.iterdir() if not p.name.startswith(".")] == ["@nexus-broker"]
    assert [p.name for p in (modules / "@nexus-broker").iterdir()] == ["sdk"]
    exported = run(
        "node",
        "--input-type=module",
        "-e",
        "import * as sdk from '@nexus-broker/sdk'; console.log(JSON.stringify(Object.keys(sdk)))",
        cwd=agent,
    )
    assert {"NexusClient", "NexusError", "NexusAuthError", "applyCredentials"} <= set(
        json.loads(exported)
    )
    strict = ["--strict", "--noEmit", "--module", "nodenext", "--moduleResolution", "nodenext"]
    (agent / "agent.ts").write_text(TS_CONSUMER)
    run(TSC, *strict, "--target", "es2022", "agent.ts", cwd=agent)
    # The types are real: an expiry read as a string does not compile.
    (agent / "wrong.ts").write_text(
        TS_CONSUMER.replace("const expiresAt: number", "const expiresAt: string")
    )
    wrong = subprocess.run(
        [str(TSC), *strict, "--target", "es2022", "wrong.ts"],
        cwd=agent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode != 0 and "TS2322" in wrong.stdout, wrong.stdout
