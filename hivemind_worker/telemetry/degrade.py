"""Warn once per missing source: a collector that cannot read something logs one
warning the first time and stays quiet afterwards (a sample every 30 s must not
flood the journal with the same complaint)."""

from __future__ import annotations

import logging


class WarnOnce:
    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[str] = set()

    def __call__(self, key: str, message: str, *args: object) -> None:
        if key in self._seen:
            return
        self._seen.add(key)
        self._logger.warning(message, *args)

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self._seen)
