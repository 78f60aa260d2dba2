"""The guides' TypeScript snippets against the stack as ``make run`` starts it.

``tools.devstack`` with its own defaults: embedded SQLite and generated dev
keys, no database or backend settings (the other e2e modules run on
PostgreSQL). Only the import path and the Salesforce URL differ from the docs
(see sdk/typescript/test/docs.test.ts).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.agent_guide import Guide
from tests.e2e.test_typescript_sdk import (
    compile_sdk_and_tests,
    node_environment,
    passes_every_test,
)
from tests.support.app_server import AppServer
from tests.support.backend_auth_server import BackendAuthServer
from tests.support.oidc_server import OidcServer
from tools.devstack import DEV_PORTS, Stack, free_port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ports = {name: free_port() for name in DEV_PORTS}
    running = Stack(Path(tmp_path_factory.mktemp("make-run")), ports).start()
    try:
        yield running
    finally:
        running.stop()


def test_the_guides_typescript_snippets_run_on_make_runs_stack(
    stack: Stack, guide: Guide, idp: OidcServer, backend: BackendAuthServer, app: AppServer
) -> None:
    passes_every_test(
        "docs.test.js", compile_sdk_and_tests(), node_environment(stack, guide, idp, backend, app)
    )
