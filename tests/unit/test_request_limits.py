from __future__ import annotations

import pytest
from nexus.broker.v1 import connections_pb2, providers_pb2
from nexus.gateway.v1 import gateway_pb2
from nexus_common import ValidationFailed
from nexus_common._interceptors import _check_strings


@pytest.mark.parametrize(
    ("message", "path"),
    [
        (providers_pb2.Provider(name="ok", description="a\x00b"), "description"),
        (providers_pb2.Provider(scopes=["read", "wr\x00ite"]), "scopes"),
        (
            gateway_pb2.CaptureCredentialsRequest(
                capture=connections_pb2.CaptureCredentialsRequest(
                    state="s", credentials={"api_key": "k\x00"}
                )
            ),
            "capture.credentials",
        ),
        (
            gateway_pb2.CaptureCredentialsRequest(
                capture=connections_pb2.CaptureCredentialsRequest(credentials={"a\x00": "v"})
            ),
            "capture.credentials",
        ),
    ],
)
def test_nul_is_found_wherever_a_string_hides(message: object, path: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        _check_strings(message)  # type: ignore[arg-type]
    assert refused.value.metadata["field"] == path and "NUL" in refused.value.message


def test_clean_messages_pass() -> None:
    provider = providers_pb2.Provider(name="ok", description="fine", scopes=["a", "b"])
    provider.params.update({"nested": {"deep": "value"}})
    _check_strings(provider)
