"""Host setup: the core of `hivemind-worker install` (service user, directories,
unit) and the ownership helper enrollment uses. Nothing here talks to the master."""

from hivemind_worker.hostsetup.install import (  # noqa: F401
    InstallReport,
    install,
    secure_config_dir,
    share_with_service,
    uninstall,
)

__all__ = ["InstallReport", "install", "secure_config_dir", "share_with_service", "uninstall"]
