"""Errors as google.rpc.Status with details, on both sides of a gRPC call."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "weir.dev"

log = logging.getLogger("weir.server")


@dataclass
class WeirError(Exception):
    """An error a servicer raises; the server kit turns it into a rich gRPC status."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: Sequence[tuple[str, str]] = ()
    retry_after_s: float = 0.0

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def to_status(self) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        if self.reason:
            info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=dict(self.metadata))
            details.append(_pack(info))
        if self.field_violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.field_violations
                ]
            )
            details.append(_pack(bad))
        if self.retry_after_s > 0:
            info = error_details_pb2.RetryInfo()
            info.retry_delay.FromMilliseconds(int(self.retry_after_s * 1000))
            details.append(_pack(info))
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)


def _pack(msg: object) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)  # type: ignore[arg-type]
    return a


def invalid_argument(message: str, *violations: tuple[str, str], reason: str = "INVALID_ARGUMENT") -> WeirError:
    return WeirError(grpc.StatusCode.INVALID_ARGUMENT, message, reason=reason, field_violations=violations)


async def abort(context: grpc.aio.ServicerContext, err: WeirError) -> NoReturn:
    await context.abort_with_status(rpc_status.to_status(err.to_status()))
    raise AssertionError("unreachable")  # pragma: no cover


def status_of(exc: BaseException, method: str) -> status_pb2.Status:
    """The status a handler that raised `exc` answers with (a unary call's or a multiplexed one's): a WeirError's
    own, with its details; anything else is a bug: INTERNAL, its traceback logged here and never sent."""
    if isinstance(exc, WeirError):
        return exc.to_status()
    log.exception("unhandled error in %s", method, exc_info=exc)
    return status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message="internal error")


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def status_code(status: status_pb2.Status) -> grpc.StatusCode:
    return _CODES.get(status.code, grpc.StatusCode.UNKNOWN)


def parse_status(raw: bytes) -> tuple[grpc.StatusCode, str]:
    """Code and message of a serialized google.rpc.Status."""
    status = status_pb2.Status.FromString(raw)
    return status_code(status), status.message


@dataclass
class RemoteError:
    """What a client learns from a failed call: code, message and the details the server attached."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    retry_after_s: float = 0.0


def parse_rpc_error(exc: grpc.RpcError) -> RemoteError:
    """Reads google.rpc.Status details from a failed call (works for aio and sync errors)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message = exc.details() if hasattr(exc, "details") else str(exc)
    out = RemoteError(code=code, message=message or "")
    try:
        status = rpc_status.from_call(exc)
    except Exception:
        status = None
    if status is None:
        md: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
        for key, value in md or ():
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
    if status is None:
        return out
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            out.reason, out.metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.field_violations = [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            detail.Unpack(ri)
            out.retry_after_s = ri.retry_delay.ToMilliseconds() / 1000
    return out


__all__ = ["RemoteError", "WeirError", "abort", "code_pb2", "invalid_argument", "parse_rpc_error", "parse_status",
           "status_code", "status_of"]
