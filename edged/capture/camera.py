"""One camera's capture thread: it owns the source, and keeps the newest frame in a mailbox.

A live source that fails or ends is reopened with exponential backoff and jitter while the
camera's status says ``reconnecting``; a file source that ends says ``ended``.
"""

from __future__ import annotations

import random
import threading
import time

import structlog

from edged.bus.schema import CameraStatus
from edged.capture.config import CameraConfig
from edged.capture.frame import Frame
from edged.capture.sampler import FrameMailbox, FramePipeline
from edged.capture.sources import FrameSource, SourceEnded, SourceError, open_source, redact
from edged.parts import Pulse

log = structlog.get_logger()
FIRST_RETRY_S = 0.5


class CameraCapture:
    def __init__(self, name: str, config: CameraConfig, pulse: Pulse | None = None,
                 beat_every: float = 1.0, source: FrameSource | None = None) -> None:
        self.name, self.config = name, config
        self.mailbox = FrameMailbox()
        self.pipeline = FramePipeline(config)
        self._source = source
        self._pulse = pulse or Pulse(f"camera {name}")
        self._beat, self._beat_every = self._pulse.beat, beat_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pulse.guard(self._run), name=f"capture-{name}", daemon=True)
        self.state = "offline"
        self.last_error: str | None = None
        self.frames_read = 0
        self.reconnects = 0
        self._fps = 0.0
        self._label = redact(config.source)
        self.source_size: tuple[int, int] | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def status(self) -> CameraStatus:
        return CameraStatus(state=self.state, last_error=self.last_error, fps=round(self._fps, 1),  # type: ignore[arg-type]
                            drops=self.mailbox.drops)

    def _open(self) -> FrameSource:
        config = self.config
        source = self._source or open_source(config.source, config.width, config.height, config.realtime, config.loop)
        source.open()
        return source

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            source = None
            try:
                source = self._open()
                if failures:
                    log.info("camera reconnected", camera=self.name, source=self._label, attempts=failures)
                failures = 0
                self.state, self.last_error = "online", None
                self._read(source)
            except SourceEnded:
                self.state = "ended"
                self._pulse.retire()
                log.info("camera source ended", camera=self.name, source=self._label)
                return
            except SourceError as error:
                failures += 1
                self.reconnects += 1
                self.state, self.last_error = "reconnecting", str(error)
                delay = min(self.config.reconnect_max_s, FIRST_RETRY_S * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
                log.warning("camera lost; reconnecting", camera=self.name, source=self._label,
                            error=str(error), retry_in_s=round(delay, 2))
                self._wait(delay)
            finally:
                if source is not None:
                    source.close()
        self.state = "offline"

    def _wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._beat()
            self._stop.wait(min(self._beat_every, max(0.0, deadline - time.monotonic())))

    def _read(self, source: FrameSource) -> None:
        last = None
        while not self._stop.is_set():
            self._beat()
            rgb = source.read(timeout=self._beat_every)
            if rgb is None:
                continue
            now = time.monotonic()
            if last is not None:
                self._fps = 0.9 * self._fps + 0.1 / max(now - last, 1e-6) if self._fps else 1 / max(now - last, 1e-6)
            last = now
            self.source_size = (rgb.shape[1], rgb.shape[0])
            seq = self.frames_read
            self.frames_read += 1
            model_frame = self.pipeline.process(rgb, now, getattr(source, "gate_luma", None))
            if model_frame is not None:
                self.mailbox.put(Frame(rgb=model_frame, camera=self.name, seq=seq, monotonic=now, wall=time.time()))
