"""The event loop the long-running commands use: uvloop where installed, else asyncio.

uvloop (libuv) makes the daemon's many small socket round trips cheaper; it
is a dependency on Linux and macOS. `JOBENGINE_LOOP=asyncio` turns it off.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


def use_uvloop() -> bool:
    """Whether uvloop is installed and not turned off."""
    if os.environ.get("JOBENGINE_LOOP", "").lower() == "asyncio":
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(func: Callable[[], Awaitable[T]]) -> T:
    """`anyio.run(func)` on uvloop when available."""
    return anyio.run(func, backend_options={"use_uvloop": use_uvloop()})
