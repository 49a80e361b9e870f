"""GPUs: what the node has (a seam over NVML) and which task holds which device.

``GpuInventory`` is the seam: the real one asks NVML, tests hand in a fake with the
same two members. ``GpuAllocator`` hands out specific device ids exclusively among
concurrent tasks. It must never fall back to running a GPU task on the CPU: a
request it cannot satisfy raises TaskRejected with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from hivemind_worker.errors import TaskRejected

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuDevice:
    index: int
    uuid: str
    name: str
    memory_bytes: int

    @property
    def device_id(self) -> str:
        """The id given to Docker's device request: the UUID (stable across
        reboots and driver reloads), else the index."""
        return self.uuid or str(self.index)


class GpuInventory(Protocol):
    nvidia_runtime: bool  # Docker can hand GPUs to containers (nvidia runtime present)

    def devices(self) -> list[GpuDevice]:
        """The node's GPUs; an empty list when there are none or NVML is missing."""


class NvmlGpuInventory:
    """The real inventory. Degrades to no GPUs (one warning) without NVML."""

    def __init__(self, nvidia_runtime: bool) -> None:
        self.nvidia_runtime = nvidia_runtime
        self._devices: list[GpuDevice] | None = None

    def devices(self) -> list[GpuDevice]:
        if self._devices is None:  # GPUs do not come and go while the agent runs
            self._devices = self._query()
        return list(self._devices)

    @staticmethod
    def _query() -> list[GpuDevice]:
        try:
            import ctypes

            # pynvml (~3 MB resident for the daemon's life) only where the driver's library is.
            ctypes.CDLL("libnvidia-ml.so.1")
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError, ImportError, missing libnvidia-ml.so
            logger.info("no GPUs: NVML is not available (%s)", exc)  # normal on CPU nodes; doctor warns
            return []
        try:
            found = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = pynvml.nvmlDeviceGetUUID(handle)
                name = pynvml.nvmlDeviceGetName(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
                found.append(
                    GpuDevice(
                        index=index,
                        uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                        name=name.decode() if isinstance(name, bytes) else str(name),
                        memory_bytes=int(memory),
                    )
                )
            return found
        except Exception as exc:
            logger.warning("no GPUs: NVML query failed (%s)", exc)
            return []
        finally:
            try:
                pynvml.nvmlShutdown()
            except Exception:
                pass


class StaticGpuInventory:
    """A fixed inventory: for tests and for nodes told their GPUs by configuration."""

    def __init__(self, devices: list[GpuDevice] | None = None, nvidia_runtime: bool = True) -> None:
        self._devices = list(devices or [])
        self.nvidia_runtime = nvidia_runtime

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)


class GpuAllocator:
    """Exclusive assignment of GPU device ids to tasks.

    Synchronous and called on the event loop only, so no lock is needed: an
    allocation cannot interleave with another. ``max_gpus`` < 0 = all devices.
    """

    def __init__(self, inventory: GpuInventory, max_gpus: int = -1) -> None:
        self._inventory = inventory
        self._max_gpus = max_gpus
        self._ids: list[str] | None = None
        self._held: dict[str, tuple[str, ...]] = {}  # task id -> device ids

    def _usable(self) -> list[str]:
        if self._ids is None:
            ids = [d.device_id for d in sorted(self._inventory.devices(), key=lambda d: d.index)]
            self._ids = ids if self._max_gpus < 0 else ids[: self._max_gpus]
        return self._ids

    @property
    def total(self) -> int:
        """GPUs tasks may use (0 without the NVIDIA container runtime)."""
        return len(self._usable()) if self._inventory.nvidia_runtime else 0

    @property
    def free(self) -> int:
        return self.total - sum(len(v) for v in self._held.values())

    def held_by(self, task_id: str) -> tuple[str, ...]:
        return self._held.get(task_id, ())

    def check(self, count: int) -> None:
        """Raise TaskRejected if ``count`` GPUs cannot be given now."""
        if count <= 0:
            return
        usable = self._usable()
        if not usable:
            raise TaskRejected(f"task asks for {count} GPU(s) but this node has no GPUs")
        if not self._inventory.nvidia_runtime:
            raise TaskRejected(
                f"task asks for {count} GPU(s) but Docker on this node has no NVIDIA runtime; "
                "install nvidia-container-toolkit and restart Docker"
            )
        if count > len(usable):
            raise TaskRejected(f"task asks for {count} GPU(s) but this node has only {len(usable)}")
        if count > self.free:
            raise TaskRejected(f"task asks for {count} GPU(s) but only {self.free} of {len(usable)} are free")

    def allocate(self, task_id: str, count: int) -> tuple[str, ...]:
        """Give ``count`` free devices to ``task_id`` (idempotent per task)."""
        if task_id in self._held:
            return self._held[task_id]
        if count <= 0:
            return ()
        self.check(count)
        taken = {i for ids in self._held.values() for i in ids}
        chosen = tuple(i for i in self._usable() if i not in taken)[:count]
        self._held[task_id] = chosen
        return chosen

    def restore(self, task_id: str, device_ids: tuple[str, ...]) -> None:
        """Re-register what a running container already holds (after a restart)."""
        if device_ids:
            self._held[task_id] = tuple(device_ids)

    def release(self, task_id: str) -> None:
        self._held.pop(task_id, None)


@dataclass(frozen=True)
class GpuReading:
    """One device's instantaneous figures for the task meter (None: not reported)."""

    index: int
    uuid: str
    utilization_percent: float | None  # NVML's busy share over its last sample period
    energy_mj: int | None  # cumulative since the driver loaded (Volta and newer)


class NvmlGpuMeter:
    """Reads the devices a task holds through NVML (``pynvml``, or an injected module
    with the same calls); kept initialized while the task runs, ``close()`` after.

    Degrades: without NVML, or for a device NVML does not find, ``read`` gives no
    reading for it; a figure the device does not support (NVML_ERROR_NOT_SUPPORTED)
    is None. Blocking calls: use from a worker thread."""

    def __init__(self, nvml: object | None = None) -> None:
        self._nvml: Any = nvml
        self._handles: dict[str, tuple[int, str, Any]] | None = None  # device id -> (index, uuid, handle)

    def _open(self) -> dict[str, tuple[int, str, Any]]:
        if self._handles is None:
            if self._nvml is None:
                import pynvml  # only a GPU task's meter loads NVML

                self._nvml = pynvml
            nv = self._nvml
            nv.nvmlInit()
            handles = {}
            try:
                for index in range(nv.nvmlDeviceGetCount()):
                    handle = nv.nvmlDeviceGetHandleByIndex(index)
                    raw = nv.nvmlDeviceGetUUID(handle)
                    uuid = raw.decode() if isinstance(raw, bytes) else str(raw)
                    handles[uuid] = handles[str(index)] = (index, uuid, handle)
            except Exception:
                try:
                    nv.nvmlShutdown()
                except Exception:
                    pass
                raise
            self._handles = handles
        return self._handles

    def read(self, device_ids: tuple[str, ...]) -> list[GpuReading]:
        """Readings of ``device_ids`` (UUIDs or indexes, as GpuDevice.device_id);
        NVML errors other than per-field ones propagate for the caller to degrade."""
        handles, nv = self._open(), self._nvml
        out = []
        for device_id in device_ids:
            if device_id not in handles:
                continue
            index, uuid, h = handles[device_id]
            util = _optional(lambda: float(nv.nvmlDeviceGetUtilizationRates(h).gpu))
            energy = _optional(lambda: int(nv.nvmlDeviceGetTotalEnergyConsumption(h)))
            out.append(GpuReading(index, uuid, util, energy))
        return out

    def close(self) -> None:
        if self._handles is not None and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
        self._handles = None


def _optional(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # NVMLError_NotSupported and kin; AttributeError on an old pynvml
        return None
