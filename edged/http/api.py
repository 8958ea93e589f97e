"""The HTTP door's own routes: status, snapshots, events as server-sent events, and Prometheus
metrics. Each is a view of a bus op or of the bus's events, with the bus's schema."""

from __future__ import annotations

import asyncio
import base64
import uuid

from aiohttp import web
from prometheus_client.exposition import choose_encoder
from pydantic import ValidationError

from edged.bus.local import LocalBus
from edged.bus.schema import SnapshotRequest
from edged.http.exchange import RequestFailed, call
from edged.http.metrics import DaemonMetrics

SSE_KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies and clients from closing an idle event stream."""
SUBSCRIBER_BACKLOG = 1000
"""Events waiting for one slow /api/events client before it misses some (it sees the gap in seq)."""


class EventHub:
    """Hands each bus event to every /api/events client, on the door's event loop."""

    def __init__(self) -> None:
        self.subscribers: set[asyncio.Queue[tuple[str, str | None, str]]] = set()
        self.missed = 0

    def publish(self, kind: str, camera: str | None, envelope: str) -> None:
        for queue in self.subscribers:
            try:
                queue.put_nowait((kind, camera, envelope))
            except asyncio.QueueFull:
                self.missed += 1


def routes(bus: LocalBus, hub: EventHub, metrics: DaemonMetrics) -> list[web.RouteDef]:
    async def status(request: web.Request) -> web.Response:
        return web.json_response(text=bus.status().model_dump_json())

    async def snapshot(request: web.Request) -> web.Response:
        camera, seq = request.match_info["camera"], request.match_info.get("seq")
        try:
            ask = SnapshotRequest(id=f"http-{uuid.uuid4().hex[:12]}", camera=camera,
                                  frame_seq=int(seq) if seq is not None else None)
        except ValidationError as error:
            raise RequestFailed.bad_request(f"camera: {error.errors()[0]['msg']}") from None
        data = await call(bus, ask)
        return web.Response(body=base64.b64decode(data["image"]), content_type="image/jpeg",
                            headers={"X-Edged-Frame-Seq": str(data["frame_seq"]), "Cache-Control": "no-store"})

    async def events(request: web.Request) -> web.StreamResponse:
        kinds = set(filter(None, request.query.get("kinds", "").split(","))) or None
        camera = request.query.get("camera")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        queue: asyncio.Queue[tuple[str, str | None, str]] = asyncio.Queue(SUBSCRIBER_BACKLOG)
        hub.subscribers.add(queue)
        try:
            await response.write(b": edged events\n\n")
            while True:
                try:
                    kind, from_camera, envelope = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if (kinds is None or kind in kinds) and (camera is None or from_camera == camera):
                    await response.write(f"event: {kind}\ndata: {envelope}\n\n".encode())
        except ConnectionResetError:
            pass  # the client left
        finally:
            hub.subscribers.discard(queue)
        return response

    async def prometheus(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.get_running_loop().run_in_executor(None, encoder, metrics.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    return [
        web.get("/api/status", status),
        web.get("/api/cameras/{camera}/latest.jpg", snapshot),
        web.get(r"/api/cameras/{camera}/frames/{seq:\d+}.jpg", snapshot),
        web.get("/api/events", events),
        web.get("/metrics", prometheus),
    ]
