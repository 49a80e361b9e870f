"""The node's policy for what a task may do: the master proposes, the node decides.

``check(req, settings)`` looks at everything in a TaskRequest that reaches the host
(network, image, GPUs, timeout, env, entry point) and at the node's own task user,
and raises TaskRejected naming what was refused and the setting that would allow
it. Values above a ceiling are rejected, never clamped: the master then knows the
task can never run here as asked. Admission (does it fit *now*) is admission.py.

Image allow-list (``task_images``), as an operator would expect it:
- empty (the default): only the node's own ``task_image`` (a request that names no
  image gets it);
- comma-separated entries: a glob matched against the whole reference as the master
  sent it (``python:3.11*``, ``ghcr.io/acme/*``; ``*`` = any image), or a digest
  (``@sha256:<64 hex>``, or ``name@sha256:...``) matched against a reference pinned
  to that digest, so an operator can allow exact images whatever they are called.

Pure but for the passwd/group lookups of the task user (cached); no Docker, no I/O.
"""

from __future__ import annotations

import fnmatch
import functools
import grp
import pwd
import re

from hivemind_worker.config import Settings
from hivemind_worker.errors import TaskRejected
from hivemind_worker.tasks.model import NetworkPolicy, TaskRequest

_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
_REFERENCE = re.compile(r"[a-z0-9][a-zA-Z0-9._/:@-]{0,254}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check(req: TaskRequest, settings: Settings) -> None:
    """Raise TaskRejected when the node's policy forbids ``req`` (see the module docstring)."""
    _check_network(req, settings)
    _check_image(req.image or settings.task_image, settings)
    gpus = req.resources.gpu_count
    if settings.task_max_gpus >= 0 and gpus > settings.task_max_gpus:
        raise TaskRejected(
            f"asks for {gpus} GPU(s), this node allows at most {settings.task_max_gpus} per task "
            "(setting task_max_gpus)"
        )
    if req.timeout_s < 0 or req.timeout_s != req.timeout_s:
        raise TaskRejected(f"invalid timeout {req.timeout_s!r}: use 0 (the node's default) or a positive number")
    if req.timeout_s > settings.task_max_timeout_s:
        raise TaskRejected(
            f"asks for a timeout of {req.timeout_s:.0f} s, this node allows at most "
            f"{settings.task_max_timeout_s:.0f} s (setting task_max_timeout_s)"
        )
    _check_env(req, settings)
    _check_entrypoint(req.entrypoint)
    problem = host_account_problem(settings.task_user)
    if problem:
        raise TaskRejected(f"node misconfigured: {problem}")


def allowed_networks(settings: Settings) -> set[str]:
    # "none" gives a task less than any other policy: it is always allowed.
    return {n.strip() for n in settings.task_networks.split(",") if n.strip()} | {"none"}


def _check_network(req: TaskRequest, settings: Settings) -> None:
    if req.network.value not in allowed_networks(settings):
        raise TaskRejected(
            f"network {req.network.value!r} is not allowed on this node; the operator allows it with "
            f'task_networks = "none,{req.network.value}"'
        )


def image_allowed(image: str, settings: Settings) -> bool:
    entries = [e.strip() for e in settings.task_images.split(",") if e.strip()]
    if not entries:
        return image == settings.task_image
    _, _, pinned = image.partition("@")
    for entry in entries:
        name, at, digest = entry.rpartition("@")
        if at and _DIGEST.fullmatch(digest):
            # A digest entry allows exactly that content, under its name or any name.
            base = image.partition("@")[0]
            if pinned == digest and (not name or base == name or base.startswith(name + ":")):
                return True
        elif fnmatch.fnmatchcase(image, entry):
            return True
    return False


def _check_image(image: str, settings: Settings) -> None:
    if not _REFERENCE.fullmatch(image) or ".." in image:
        raise TaskRejected(f"invalid image reference {image[:100]!r}: expected name[:tag][@sha256:digest]")
    if not image_allowed(image, settings):
        allowed = settings.task_images or f"only the node's task image {settings.task_image}"
        raise TaskRejected(
            f"image {image} is not allowed on this node (task_images: {allowed}); the operator allows "
            'it by adding a pattern or its @sha256: digest to task_images, e.g. task_images = "python:3.11*"'
        )


def _check_env(req: TaskRequest, settings: Settings) -> None:
    total = 0
    for key, value in req.env.items():
        if not _ENV_KEY.fullmatch(key):
            raise TaskRejected(
                f"invalid env key {key[:60]!r}: use letters, digits and '_' (not first), at most 256 characters"
            )
        if "\x00" in value:
            raise TaskRejected(f"env {key}: the value contains a NUL byte")
        total += len(key.encode()) + len(value.encode()) + 2
    if total > settings.task_env_max_bytes:
        raise TaskRejected(
            f"env is {total} bytes, this node allows at most {settings.task_env_max_bytes} "
            "(setting task_env_max_bytes); put large inputs in the bundle"
        )


def _check_entrypoint(entrypoint: str) -> None:
    if not entrypoint:
        return
    parts = entrypoint.split("/")
    if entrypoint.startswith("/") or ".." in parts or _CONTROL.search(entrypoint) or len(entrypoint) > 255:
        raise TaskRejected(
            f"invalid entry point {entrypoint[:100]!r}: a relative path inside the bundle, without '..'"
        )


@functools.lru_cache(maxsize=8)
def host_account_problem(task_user: str) -> str:
    """Why ``task_user`` ("uid:gid") is unfit for tasks, or "" when it is fit: it must
    not be root, nor the uid of a host account, nor the gid of a host group."""
    uid_text, _, gid_text = task_user.partition(":")
    try:
        uid, gid = int(uid_text), int(gid_text or uid_text)
    except ValueError:
        return f"task_user {task_user!r} is not numeric uid:gid; set e.g. task_user = \"65100:65100\""
    fix = "set task_user to an id no host account or group has, e.g. 65100:65100"
    if uid == 0 or gid == 0:
        return f"task_user {task_user} is root; {fix}"
    try:
        return f"task_user {task_user}: uid {uid} is host account {pwd.getpwuid(uid).pw_name!r}; {fix}"
    except KeyError:
        pass
    try:
        return f"task_user {task_user}: gid {gid} is host group {grp.getgrgid(gid).gr_name!r}; {fix}"
    except KeyError:
        return ""
