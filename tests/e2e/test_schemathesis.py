"""schemathesis against the OpenAPI document Envoy serves, on the whole stack (PostgreSQL).

It reads GET /openapi.json from Envoy, sends what the document allows and much that it does
not (its coverage, fuzzing and stateful phases), and fails on any 5xx or any answer the
document does not describe: an undocumented status or content type, or a body that breaks
its schema (the error shape included). The seed is fixed and generation deterministic, so a
failure replays; the run is bounded by examples per operation and a time budget.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.devstack import ROOT, Stack

pytestmark = pytest.mark.postgres

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
EXAMPLES_PER_OPERATION = 10
SEED = 20261130
# About two minutes on PostgreSQL; the budget caps it on a loaded runner (what was generated
# by then is still checked).
TIME_BUDGET_SECONDS = 150


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document(
    stack: Stack, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    command = [
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{stack.rest_url}/openapi.json",
        "--url",
        stack.rest_url,
        "--header",
        f"X-API-Key: {stack.admin_key}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--generation-deterministic",
        "--continue-on-failure",
        "--workers",
        "1",
        "--max-time",
        str(TIME_BUDGET_SECONDS),
        "--request-timeout",
        "35",
        "--report-json-path",
        str(report),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIME_BUDGET_SECONDS + 120,
        cwd=tmp_path,
    )
    output = result.stdout[-20_000:] + result.stderr[-5_000:]
    summary = json.loads(report.read_text())
    document = json.loads((ROOT / "envoy" / "openapi.json").read_text())
    operations = sum(len(methods) for methods in document["paths"].values())
    # A run that tested nothing would pass too: every operation must have been reached.
    assert summary["operations"]["tested"] == operations, output
    assert summary["test_cases"]["generated"] >= operations * 5, output
    assert summary["failures"] == [], output
    assert summary["errors"] == [], output
    assert result.returncode == 0, output
