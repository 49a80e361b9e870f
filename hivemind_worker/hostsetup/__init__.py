"""Host setup: the core of `hivemind-worker install` (service user, directories,
unit) and the ownership helper enrollment uses. Nothing here talks to the master."""

from hivemind_worker.hostsetup.install import (  # noqa: F401
    InstallReport,
    chown_to_service_user,
    install,
    uninstall,
)

__all__ = ["InstallReport", "chown_to_service_user", "install", "uninstall"]
