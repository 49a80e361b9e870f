"""The one place where grpc errors become the project's errors."""

from __future__ import annotations

import grpc

from hivemind_worker.errors import (
    ControlError,
    CredentialRevoked,
    EnrollmentError,
    MasterUnreachable,
    ProtocolError,
)


def translate(exc: grpc.RpcError, what: str, target: str = "", enrolling: bool = False) -> ControlError | EnrollmentError:
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or str(code)
    where = f" at {target}" if target else ""
    if code == grpc.StatusCode.UNAUTHENTICATED and not enrolling:
        return CredentialRevoked(f"{what}: the master{where} refused this node's credential ({details}); re-enroll this node")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION) and enrolling:
        return EnrollmentError(f"enrollment refused: {details}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return MasterUnreachable(f"{what}: master{where} unreachable ({details}); it will be retried")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ProtocolError(f"{what}: message too large ({details}); raise max_message_bytes on both sides")
    return ControlError(f"{what}: master{where} answered {code.name if code else 'error'}: {details}")
