"""A request to the daemon from the HTTP door's event loop: handed to the local bus (the same
agent and scheduler as a ZeroMQ client's), its replies brought back onto the loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from edged.bus.local import LocalBus, LocalReply
from edged.bus.schema import ErrorInfo, Request

HTTP_STATUS = {"bad_request": 400, "unknown_op": 400, "too_large": 413, "busy": 429, "deadline": 504,
               "not_found": 404, "unavailable": 503, "internal": 500}
"""The bus's error codes as HTTP statuses."""


class RequestFailed(Exception):
    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error

    @classmethod
    def bad_request(cls, message: str) -> RequestFailed:
        return cls(ErrorInfo(code="bad_request", message=message))

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.error.code, 500)


async def replies(bus: LocalBus, request: Request) -> AsyncIterator[LocalReply]:
    """Every reply to ``request``, partial ones first; an error reply raises RequestFailed, and
    so does the deadline ([bus] request_timeout_s). A client that leaves frees its place."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[LocalReply] = asyncio.Queue()
    respond = bus.request(request, lambda reply: loop.call_soon_threadsafe(queue.put_nowait, reply))
    deadline = time.monotonic() + bus.request_timeout_s
    try:
        while True:
            try:
                reply = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise RequestFailed(ErrorInfo(code="deadline", message=f"not answered within {bus.request_timeout_s:g} s"))
            if reply.error is not None:
                raise RequestFailed(reply.error)
            yield reply
            if not reply.partial:
                return
    finally:
        respond.abandon()  # after the final reply this does nothing; before it, later replies are dropped


async def call(bus: LocalBus, request: Request) -> Any:
    """The final reply's data."""
    async for reply in replies(bus, request):
        if not reply.partial:
            return reply.data
    raise AssertionError("a request ended without a final reply")
