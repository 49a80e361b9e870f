from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_ACCEPTED: _ClassVar[TaskState]
    TASK_STATE_REJECTED: _ClassVar[TaskState]
    TASK_STATE_FETCHING: _ClassVar[TaskState]
    TASK_STATE_PULLING: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_EXITED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_CANCELLED: _ClassVar[TaskState]
    TASK_STATE_TIMED_OUT: _ClassVar[TaskState]
    TASK_STATE_OOM_KILLED: _ClassVar[TaskState]
    TASK_STATE_UPLOADING: _ClassVar[TaskState]
    TASK_STATE_DONE: _ClassVar[TaskState]
    TASK_STATE_DEFERRED: _ClassVar[TaskState]
    TASK_STATE_LOST: _ClassVar[TaskState]

class LogStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_STREAM_UNSPECIFIED: _ClassVar[LogStream]
    LOG_STREAM_STDOUT: _ClassVar[LogStream]
    LOG_STREAM_STDERR: _ClassVar[LogStream]
    LOG_STREAM_SYSTEM: _ClassVar[LogStream]

class NetworkPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NETWORK_POLICY_NONE: _ClassVar[NetworkPolicy]
    NETWORK_POLICY_BRIDGE: _ClassVar[NetworkPolicy]
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_ACCEPTED: TaskState
TASK_STATE_REJECTED: TaskState
TASK_STATE_FETCHING: TaskState
TASK_STATE_PULLING: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_EXITED: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_CANCELLED: TaskState
TASK_STATE_TIMED_OUT: TaskState
TASK_STATE_OOM_KILLED: TaskState
TASK_STATE_UPLOADING: TaskState
TASK_STATE_DONE: TaskState
TASK_STATE_DEFERRED: TaskState
TASK_STATE_LOST: TaskState
LOG_STREAM_UNSPECIFIED: LogStream
LOG_STREAM_STDOUT: LogStream
LOG_STREAM_STDERR: LogStream
LOG_STREAM_SYSTEM: LogStream
NETWORK_POLICY_NONE: NetworkPolicy
NETWORK_POLICY_BRIDGE: NetworkPolicy

class GpuInfo(_message.Message):
    __slots__ = ("index", "uuid", "name", "memory_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    name: str
    memory_bytes: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class NodeFacts(_message.Message):
    __slots__ = ("hostname", "cpu_cores", "memory_bytes", "gpus", "docker_version", "agent_version", "os", "arch", "nvidia_runtime")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    DOCKER_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    NVIDIA_RUNTIME_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    cpu_cores: int
    memory_bytes: int
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    docker_version: str
    agent_version: str
    os: str
    arch: str
    nvidia_runtime: bool
    def __init__(self, hostname: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., docker_version: _Optional[str] = ..., agent_version: _Optional[str] = ..., os: _Optional[str] = ..., arch: _Optional[str] = ..., nvidia_runtime: _Optional[bool] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("token", "facts", "wireguard_public_key", "usage_public_key")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    USAGE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    token: str
    facts: NodeFacts
    wireguard_public_key: str
    usage_public_key: bytes
    def __init__(self, token: _Optional[str] = ..., facts: _Optional[_Union[NodeFacts, _Mapping]] = ..., wireguard_public_key: _Optional[str] = ..., usage_public_key: _Optional[bytes] = ...) -> None: ...

class VpnAssignment(_message.Message):
    __slots__ = ("address", "server_public_key", "endpoint", "allowed_ips", "dns", "persistent_keepalive_s", "master_address")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SERVER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_IPS_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_KEEPALIVE_S_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    server_public_key: str
    endpoint: str
    allowed_ips: _containers.RepeatedScalarFieldContainer[str]
    dns: _containers.RepeatedScalarFieldContainer[str]
    persistent_keepalive_s: int
    master_address: str
    def __init__(self, address: _Optional[str] = ..., server_public_key: _Optional[str] = ..., endpoint: _Optional[str] = ..., allowed_ips: _Optional[_Iterable[str]] = ..., dns: _Optional[_Iterable[str]] = ..., persistent_keepalive_s: _Optional[int] = ..., master_address: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("node_id", "node_credential", "vpn", "heartbeat_interval_s", "server_time_ms")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    VPN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    node_credential: str
    vpn: VpnAssignment
    heartbeat_interval_s: int
    server_time_ms: int
    def __init__(self, node_id: _Optional[str] = ..., node_credential: _Optional[str] = ..., vpn: _Optional[_Union[VpnAssignment, _Mapping]] = ..., heartbeat_interval_s: _Optional[int] = ..., server_time_ms: _Optional[int] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpu_millicores", "memory_bytes", "gpu_count")
    CPU_MILLICORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    cpu_millicores: int
    memory_bytes: int
    gpu_count: int
    def __init__(self, cpu_millicores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpu_count: _Optional[int] = ...) -> None: ...

class HeldTask(_message.Message):
    __slots__ = ("task_id", "state", "last_log_seq", "result_pending", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_SEQ_FIELD_NUMBER: _ClassVar[int]
    RESULT_PENDING_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: TaskState
    last_log_seq: int
    result_pending: bool
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., last_log_seq: _Optional[int] = ..., result_pending: _Optional[bool] = ..., attempt: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node_id", "agent_version", "capacity", "free", "tasks", "draining", "max_message_bytes", "task_slots", "drain_reason", "usage_public_key")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TASK_SLOTS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_version: str
    capacity: Resources
    free: Resources
    tasks: _containers.RepeatedCompositeFieldContainer[HeldTask]
    draining: bool
    max_message_bytes: int
    task_slots: int
    drain_reason: str
    usage_public_key: bytes
    def __init__(self, node_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., capacity: _Optional[_Union[Resources, _Mapping]] = ..., free: _Optional[_Union[Resources, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[HeldTask, _Mapping]]] = ..., draining: _Optional[bool] = ..., max_message_bytes: _Optional[int] = ..., task_slots: _Optional[int] = ..., drain_reason: _Optional[str] = ..., usage_public_key: _Optional[bytes] = ...) -> None: ...

class GpuSample(_message.Message):
    __slots__ = ("index", "uuid", "name", "utilization_percent", "memory_used_bytes", "memory_total_bytes", "temperature_c", "power_w")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    name: str
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    power_w: float
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., utilization_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., temperature_c: _Optional[float] = ..., power_w: _Optional[float] = ...) -> None: ...

class TaskUsage(_message.Message):
    __slots__ = ("task_id", "cpu_percent", "memory_bytes", "read_bytes", "write_bytes")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    cpu_percent: float
    memory_bytes: int
    read_bytes: int
    write_bytes: int
    def __init__(self, task_id: _Optional[str] = ..., cpu_percent: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., read_bytes: _Optional[int] = ..., write_bytes: _Optional[int] = ...) -> None: ...

class Reward(_message.Message):
    __slots__ = ("report", "today", "total")
    REPORT_FIELD_NUMBER: _ClassVar[int]
    TODAY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    report: int
    today: int
    total: int
    def __init__(self, report: _Optional[int] = ..., today: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class TelemetryReport(_message.Message):
    __slots__ = ("time_ms", "cpu_percent", "memory_percent", "memory_used_bytes", "memory_total_bytes", "gpu_percent", "gpus", "tasks", "load1", "disk_free_bytes", "reward", "free")
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    LOAD1_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    time_ms: int
    cpu_percent: float
    memory_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    gpu_percent: float
    gpus: _containers.RepeatedCompositeFieldContainer[GpuSample]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskUsage]
    load1: float
    disk_free_bytes: int
    reward: Reward
    free: Resources
    def __init__(self, time_ms: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., memory_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., gpu_percent: _Optional[float] = ..., gpus: _Optional[_Iterable[_Union[GpuSample, _Mapping]]] = ..., tasks: _Optional[_Iterable[_Union[TaskUsage, _Mapping]]] = ..., load1: _Optional[float] = ..., disk_free_bytes: _Optional[int] = ..., reward: _Optional[_Union[Reward, _Mapping]] = ..., free: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class TaskEvent(_message.Message):
    __slots__ = ("task_id", "state", "reason", "exit_code", "time_ms", "detail", "seq", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: TaskState
    reason: str
    exit_code: int
    time_ms: int
    detail: str
    seq: int
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., reason: _Optional[str] = ..., exit_code: _Optional[int] = ..., time_ms: _Optional[int] = ..., detail: _Optional[str] = ..., seq: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("seq", "stream", "text", "time_ms")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    stream: LogStream
    text: str
    time_ms: int
    def __init__(self, seq: _Optional[int] = ..., stream: _Optional[_Union[LogStream, str]] = ..., text: _Optional[str] = ..., time_ms: _Optional[int] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("first_seq", "stream", "time_ms", "text")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    stream: LogStream
    time_ms: int
    text: bytes
    def __init__(self, first_seq: _Optional[int] = ..., stream: _Optional[_Union[LogStream, str]] = ..., time_ms: _Optional[int] = ..., text: _Optional[bytes] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("task_id", "lines", "chunks")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    chunks: _containers.RepeatedCompositeFieldContainer[LogChunk]
    def __init__(self, task_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[LogChunk, _Mapping]]] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("draining", "reason")
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    draining: bool
    reason: str
    def __init__(self, draining: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("hello", "telemetry", "task_event", "logs", "drain")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    TASK_EVENT_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    telemetry: TelemetryReport
    task_event: TaskEvent
    logs: LogBatch
    drain: Drain
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., telemetry: _Optional[_Union[TelemetryReport, _Mapping]] = ..., task_event: _Optional[_Union[TaskEvent, _Mapping]] = ..., logs: _Optional[_Union[LogBatch, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "report_interval_s", "server_time_ms", "log_chunks", "max_message_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REPORT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    LOG_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    report_interval_s: int
    server_time_ms: int
    log_chunks: bool
    max_message_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., report_interval_s: _Optional[int] = ..., server_time_ms: _Optional[int] = ..., log_chunks: _Optional[bool] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class BundleRef(_message.Message):
    __slots__ = ("size_bytes", "sha256")
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    size_bytes: int
    sha256: str
    def __init__(self, size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class TaskSpec(_message.Message):
    __slots__ = ("task_id", "image", "command", "entrypoint", "env", "resources", "priority", "timeout_s", "network", "bundle", "attempt", "no_retry")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NO_RETRY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    entrypoint: str
    env: _containers.ScalarMap[str, str]
    resources: Resources
    priority: int
    timeout_s: int
    network: NetworkPolicy
    bundle: BundleRef
    attempt: int
    no_retry: bool
    def __init__(self, task_id: _Optional[str] = ..., image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., entrypoint: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., priority: _Optional[int] = ..., timeout_s: _Optional[int] = ..., network: _Optional[_Union[NetworkPolicy, str]] = ..., bundle: _Optional[_Union[BundleRef, _Mapping]] = ..., attempt: _Optional[int] = ..., no_retry: _Optional[bool] = ...) -> None: ...

class CancelTask(_message.Message):
    __slots__ = ("task_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LogAck(_message.Message):
    __slots__ = ("task_id", "seq")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    seq: int
    def __init__(self, task_id: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class ResultAck(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class EventAck(_message.Message):
    __slots__ = ("task_id", "attempt", "seq")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    seq: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class MasterMessage(_message.Message):
    __slots__ = ("welcome", "assign", "cancel", "log_ack", "result_ack", "drain", "event_ack")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    LOG_ACK_FIELD_NUMBER: _ClassVar[int]
    RESULT_ACK_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    EVENT_ACK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assign: TaskSpec
    cancel: CancelTask
    log_ack: LogAck
    result_ack: ResultAck
    drain: Drain
    event_ack: EventAck
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assign: _Optional[_Union[TaskSpec, _Mapping]] = ..., cancel: _Optional[_Union[CancelTask, _Mapping]] = ..., log_ack: _Optional[_Union[LogAck, _Mapping]] = ..., result_ack: _Optional[_Union[ResultAck, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., event_ack: _Optional[_Union[EventAck, _Mapping]] = ...) -> None: ...

class FetchBundleRequest(_message.Message):
    __slots__ = ("task_id", "offset")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    offset: int
    def __init__(self, task_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class BundleChunk(_message.Message):
    __slots__ = ("offset", "data", "total_bytes", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_bytes: int
    sha256: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ResultOffsetRequest(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class ResultOffsetResponse(_message.Message):
    __slots__ = ("offset", "complete")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    complete: bool
    def __init__(self, offset: _Optional[int] = ..., complete: _Optional[bool] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("task_id", "offset", "data", "total_bytes", "sha256", "attempt", "usage")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    offset: int
    data: bytes
    total_bytes: int
    sha256: str
    attempt: int
    usage: SignedUsage
    def __init__(self, task_id: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., attempt: _Optional[int] = ..., usage: _Optional[_Union[SignedUsage, _Mapping]] = ...) -> None: ...

class SignedUsage(_message.Message):
    __slots__ = ("record", "signature")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    signature: bytes
    def __init__(self, record: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UploadResultResponse(_message.Message):
    __slots__ = ("offset", "complete")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    complete: bool
    def __init__(self, offset: _Optional[int] = ..., complete: _Optional[bool] = ...) -> None: ...

class GetCARequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCAResponse(_message.Message):
    __slots__ = ("ca_pem",)
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    ca_pem: bytes
    def __init__(self, ca_pem: _Optional[bytes] = ...) -> None: ...
