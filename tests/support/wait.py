"""Waiting on a condition with a deadline, for async tests: never sleep a fixed time
and then assert."""

from __future__ import annotations

import asyncio
from typing import Callable


async def until(predicate: Callable[[], object], timeout: float = 15.0, what: str = "the condition") -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"{what} not reached within {timeout:g} s")
        await asyncio.sleep(0.01)
