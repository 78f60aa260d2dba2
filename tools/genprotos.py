"""Generate Python code, type stubs, Envoy's descriptor set and the OpenAPI document
of the REST surface from protos/.

Usage: python -m tools.genprotos PYTHON_OUT DESCRIPTOR_OUT OPENAPI_OUT
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

from tools import genopenapi

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
# Envoy must resolve ErrorInfo to print error details as JSON, and no public
# proto imports it, so it joins the descriptor set explicitly.
DESCRIPTOR_EXTRAS = ["google/rpc/error_details.proto"]


def _run(args: list[str]) -> None:
    includes = [
        f"-I{PROTOS}",
        f"-I{PROTOS / 'third_party'}",
        f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
    ]
    if protoc.main(["protoc", *includes, *args]) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")


def proto_sources() -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "nexus").rglob("*.proto"))


def described_descriptor_set(sources: list[str], out: Path) -> None:
    """The descriptor set the OpenAPI document is built from: with the protos' comments,
    which Envoy's descriptor set leaves out."""
    _run(["--include_imports", "--include_source_info", f"--descriptor_set_out={out}", *sources])


def _openapi(sources: list[str], openapi_out: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        described = Path(scratch) / "described.pb"
        described_descriptor_set(sources, described)
        openapi_out.parent.mkdir(parents=True, exist_ok=True)
        openapi_out.write_text(genopenapi.render(described.read_bytes()))


def main(python_out: Path, descriptor_out: Path, openapi_out: Path) -> None:
    sources = proto_sources()
    python_out.mkdir(parents=True, exist_ok=True)
    descriptor_out.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            f"--python_out={python_out}",
            f"--grpc_python_out={python_out}",
            f"--mypy_out={python_out}",
            f"--mypy_grpc_out={python_out}",
            *sources,
        ]
    )
    _run(
        [
            "--include_imports",
            f"--descriptor_set_out={descriptor_out}",
            *sources,
            *DESCRIPTOR_EXTRAS,
        ]
    )
    _openapi(sources, openapi_out)
    for package in {p.parent for p in python_out.rglob("*_pb2.py")}:
        while package != python_out:
            (package / "__init__.py").touch()
            package = package.parent


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
