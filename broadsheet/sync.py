"""Running the library's coroutines from synchronous code (the CLI, tests,
the benchmark)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, TypeVar

T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    """Run ``coroutine`` to completion and return its result. In a thread of
    its own, so that this works even where an event loop is already running
    (a test driving a browser, a notebook)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
