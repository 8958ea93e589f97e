"""The HTTP door: an aiohttp server on its own thread and event loop, bound to 127.0.0.1 by
default or to a unix socket, with an optional bearer token. Its routes are api.py's (status,
snapshots, events, metrics) and openai_api.py's; every request op goes through the local bus,
so through the same agent and scheduler as the ZeroMQ bus's."""

from __future__ import annotations

import asyncio
import hmac
import os
import queue
import threading
import time
from typing import Protocol

import structlog
from aiohttp import web

from edged.bus.bus_settings import BusConfig
from edged.bus.local import LocalBus
from edged.bus.schema import DoorState
from edged.http import api, openai_api
from edged.http.exchange import RequestFailed
from edged.http.http_settings import HttpConfig, read_token
from edged.http.metrics import DaemonMetrics
from edged.config import EX_CONFIG
from edged.parts import ProgressMonitor, StartRefused

log = structlog.get_logger()


class HttpSettings(Protocol):
    @property
    def http(self) -> HttpConfig: ...
    @property
    def bus(self) -> BusConfig: ...


class HttpPart:
    name = "http"

    def __init__(self, settings: HttpSettings, monitor: ProgressMonitor, bus: LocalBus) -> None:
        self._config = settings.http
        self._bus = bus
        self._pulse = monitor.register(self.name)
        self._beat_every = monitor.beat_every
        self.metrics = DaemonMetrics(bus.status)
        self._hub = api.EventHub()
        self._events: queue.SimpleQueue[tuple[str, str | None, str]] = queue.SimpleQueue()
        self._dispatch_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._pulse.guard(self._run), name="http", daemon=True)
        self.state = DoorState(state="starting", detail=self._config.listen)
        bus.subscribe(self._on_event)

    # -- the lifecycle (main thread) ---------------------------------------------------------

    def start(self) -> None:
        """Bind (on the door's thread) and return once bound; a token file that cannot be read
        or an address that cannot be bound stops the start, with what to change."""
        try:
            token = read_token(self._config.token_file) if self._config.token_file else None
        except (OSError, ValueError) as error:
            raise StartRefused(f"[http] token_file: {error}", EX_CONFIG) from None
        self._app = self._make_app(token)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise StartRefused(f"[http] listen: cannot listen on {self._config.listen}: {self._failure}; set [http] "
                               "listen to a free address this user may bind", EX_CONFIG)
        log.info("http door listening", listen=self._config.listen, token=token is not None)

    def stop(self, deadline: float) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def apply(self, settings: HttpSettings) -> None:
        """Every [http] key needs a restart (the lifecycle says so)."""

    def describe(self) -> str:
        return f"http: {self.state.state}"

    def door_state(self) -> DoorState:
        return self.state

    # -- the bus thread ------------------------------------------------------------------------

    def _on_event(self, kind: str, camera: str | None, envelope: str) -> None:
        loop = self._loop
        if loop is None or self.state.state != "listening":
            return
        self._events.put((kind, camera, envelope))
        if not self._dispatch_pending:  # one wake-up of the event loop per batch, not per event
            self._dispatch_pending = True
            loop.call_soon_threadsafe(self._dispatch)

    # -- the door's thread -----------------------------------------------------------------------

    def _dispatch(self) -> None:
        self._dispatch_pending = False  # before draining: an event put after this schedules another pass
        while True:
            try:
                kind, camera, envelope = self._events.get_nowait()
            except queue.Empty:
                return
            self.metrics.observe_event(kind, envelope)
            self._hub.publish(kind, camera, envelope)

    def _make_app(self, token: str | None) -> web.Application:
        limit = int(self._config.max_body_mb * (1 << 20))
        app = web.Application(middlewares=[_errors(limit), _bearer(token)], client_max_size=limit)
        app.add_routes(api.routes(self._bus, self._hub, self.metrics))
        app.add_routes(openai_api.routes(self._bus))
        return app

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:  # reported to start()
            self._failure = error
            self.state = DoorState(state="failed", detail=str(error))
            self._ready.set()
            loop.close()
            return
        self.state = DoorState(state="listening", detail=self._config.listen)
        self._ready.set()
        beat = loop.call_soon(self._beat)
        try:
            loop.run_forever()
        finally:
            beat.cancel()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

    def _beat(self) -> None:
        self._pulse.beat()
        self._loop.call_later(self._beat_every, self._beat)

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        path = self._config.unix_path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # a socket file left by a daemon that was killed
            await web.UnixSite(self._runner, str(path)).start()
            os.chmod(path, 0o660)
        else:
            host, port = self._config.host_port
            await web.TCPSite(self._runner, host, port).start()


def _bearer(token: str | None):
    """Every request must carry ``Authorization: Bearer <token>`` when a token file is set."""

    @web.middleware
    async def check(request: web.Request, handler):
        if token is not None:
            given = request.headers.get("Authorization", "")
            if not given.startswith("Bearer ") or not hmac.compare_digest(given[len("Bearer "):].encode(), token.encode()):
                return _error(request, 401, "authentication_error" if _openai(request) else "unauthorized",
                              "a bearer token is required: Authorization: Bearer <the token in [http] token_file>",
                              headers={"WWW-Authenticate": 'Bearer realm="edged"'})
        return await handler(request)

    return check


def _errors(limit: int):
    """Every failure as JSON: OpenAI's error shape under /v1, the bus's ``{"error": {"code",
    "message"}}`` elsewhere. An oversized body (413) is refused from its Content-Length, before
    a byte of it is read."""

    @web.middleware
    async def answer(request: web.Request, handler):
        if request.content_length is not None and request.content_length > limit:
            return _error(request, 413, "too_large", f"the body is {request.content_length} bytes; the most this "
                          f"daemon takes is {limit} ([http] max_body_mb)")
        try:
            return await handler(request)
        except RequestFailed as failed:
            return _error(request, failed.http_status, failed.error.code, failed.error.message)
        except web.HTTPRequestEntityTooLarge:
            return _error(request, 413, "too_large", f"the body is over {limit} bytes ([http] max_body_mb)")
        except web.HTTPException as http:
            if http.status < 400:
                raise
            return _error(request, http.status, "not_found" if http.status == 404 else "bad_request", http.reason)
        except Exception as error:
            log.exception("http request failed", path=request.path)
            return _error(request, 500, "internal", f"{type(error).__name__}: {error}")

    return answer


def _openai(request: web.Request) -> bool:
    return request.path.startswith("/v1/")


def _error(request: web.Request, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    if _openai(request):
        response = openai_api.openai_error(status, message, code)
        response.headers.update(headers or {})
        return response
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)
