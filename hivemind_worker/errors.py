"""The one error tree of hivemind-worker.

Every failure a user can meet is one of these; third-party errors (grpc, docker,
NVML, OS) are translated at one boundary with ``raise ... from exc``. The CLI maps
``WorkerError`` to exit code ``exit_code`` and prints ``str(error)`` as one line,
so each message says what went wrong *and* what to do.

    WorkerError
    ├── ConfigError            a setting or config file is wrong (names key and file)
    ├── NotEnrolledError       no node identity yet: run `hivemind-worker enroll`
    ├── EnrollmentError        the master refused enrollment (token, CA hash)
    ├── ControlError           talking to the master failed
    │   ├── MasterUnreachable  network / TLS handshake problem; retried by the daemon
    │   ├── CredentialRevoked  the master no longer accepts this node; not retried
    │   └── ProtocolError      the peer sent something we cannot accept
    │       └── UsageRecordError  a usage record is unsigned, altered or malformed
    ├── TaskError              a task could not be admitted or run
    │   ├── TaskRejected       admission refused for good: the task can never run here
    │   ├── TaskDeferred       "not now": draining, full, host pressure, low disk
    │   ├── BundleError        a bundle is malformed or malicious
    │   └── ResultError        the result archive could not be made or is too large
    ├── RuntimeUnavailable     Docker (or the NVIDIA runtime) is missing or broken
    ├── VpnError               WireGuard config or tunnel problem
    └── HostError              install / systemd / permission problems on the host
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error hivemind-worker raises on purpose."""

    exit_code = 1


class ConfigError(WorkerError):
    exit_code = 2


class NotEnrolledError(WorkerError):
    exit_code = 3


class EnrollmentError(WorkerError):
    exit_code = 4


class ControlError(WorkerError):
    exit_code = 5


class MasterUnreachable(ControlError):
    pass


class CredentialRevoked(ControlError):
    exit_code = 6


class ProtocolError(ControlError):
    pass


class UsageRecordError(ProtocolError):
    pass


class TaskError(WorkerError):
    exit_code = 7


class TaskRejected(TaskError):
    pass


class TaskDeferred(TaskError):
    """Not now: the master keeps the task queued (preferably for another node)."""


class BundleError(TaskError):
    pass


class ResultError(TaskError):
    pass


class RuntimeUnavailable(WorkerError):
    exit_code = 8


class VpnError(WorkerError):
    exit_code = 9


class HostError(WorkerError):
    exit_code = 10
