from __future__ import annotations

import inspect

import grpc
import nexus_common
import pytest
from google.rpc import error_details_pb2, status_pb2
from nexus_common import _errors
from nexus_common._interceptors import to_grpc_status


def _error_classes() -> list[type[nexus_common.NexusError]]:
    return [
        cls
        for _, cls in inspect.getmembers(_errors, inspect.isclass)
        if issubclass(cls, nexus_common.NexusError)
    ]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_maps_to_a_grpc_status_with_one_error_info(
    cls: type[nexus_common.NexusError],
) -> None:
    if cls is nexus_common.RemoteError:
        error: nexus_common.NexusError = cls("NOT_FOUND", "X_MISSING", "gone")
    else:
        error = cls("something a person can read", field="name")
    status = to_grpc_status(error)
    assert status.code == grpc.StatusCode[error.grpc_status]
    assert status.code != grpc.StatusCode.OK
    proto = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    infos = [d for d in proto.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.ErrorInfo()
    assert infos[0].Unpack(info)
    assert info.reason == error.reason and info.reason.isupper()
    assert info.domain == nexus_common.ERROR_DOMAIN
    retries = [d for d in proto.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(retries) == (0 if error.retry_after_seconds is None else 1)
    assert len(proto.details) == 1 + len(retries)


def test_a_database_outage_says_when_to_try_again() -> None:
    status = to_grpc_status(nexus_common.DatabaseUnavailable("the database is unavailable"))
    proto = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in proto.details)
    assert retry.retry_delay.ToNanoseconds() == 1_000_000_000
    assert status.code == grpc.StatusCode.UNAVAILABLE


def test_echoed_input_is_clipped_in_message_and_metadata() -> None:
    huge = "x" * 6000
    error = nexus_common.ConnectionNotFound(
        f"no connection has the id {huge!r}", connection_id=huge
    )
    assert len(error.message) <= _errors.MAX_MESSAGE_CHARS
    assert error.message.endswith("characters)") and "6027 characters" in error.message
    assert len(error.metadata["connection_id"]) <= _errors.MAX_METADATA_CHARS
    assert error.metadata["connection_id"].startswith("xxx")
    short = nexus_common.ConnectionNotFound("no such connection", connection_id="c-1")
    assert short.message == "no such connection" and short.metadata == {"connection_id": "c-1"}


def test_every_leaf_error_has_its_own_reason() -> None:
    leaves = [
        cls
        for cls in _error_classes()
        if not cls.__subclasses__() and cls is not nexus_common.RemoteError
    ]
    reasons = [cls.reason for cls in leaves]
    assert len(reasons) == len(set(reasons))


def test_public_api_is_exactly_what_init_lists() -> None:
    exported = {name for name in dir(nexus_common) if not name.startswith("_")}
    assert set(nexus_common.__all__) == exported - {"annotations"}
