"""One camera's capture thread: it owns the source, and keeps the newest frame in a mailbox.

A camera is ``online`` once a frame has arrived. A live source that fails, ends, or gives no
frame for ``stall_s`` is closed and reopened with exponential backoff and jitter while the
camera's status says ``reconnecting`` and why; the backoff starts over only after a frame
arrives, so a source that opens and then fails is not retried at the fastest rate for ever.
A file source that ends says ``ended``.
"""

from __future__ import annotations

import random
import threading
import time

import structlog

from edged.capture.camera_settings import CaptureConfig
from edged.capture.camera_status import CameraStatus
from edged.capture.frame import Frame
from edged.capture.sampler import FrameMailbox, FramePipeline
from edged.capture.sources import FrameSource, SourceEnded, SourceError, open_source, redact
from edged.parts import Pulse

log = structlog.get_logger()
FIRST_RETRY_S = 0.5


class CameraCapture:
    def __init__(self, name: str, config: CaptureConfig, pulse: Pulse | None = None,
                 beat_every: float = 1.0, source: FrameSource | None = None) -> None:
        self.name, self.config = name, config
        self.mailbox = FrameMailbox()
        self.pipeline = FramePipeline(config)
        self._source = source
        self._pulse = pulse or Pulse(f"camera {name}")
        self._beat_every = beat_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pulse.guard(self._run), name=f"capture-{name}", daemon=True)
        self.state = "offline"
        self.last_error: str | None = None
        self.frames_read = 0
        self.reconnects = 0
        self._fps = 0.0
        self._last_frame_at: float | None = None
        self._failures = 0
        """Failed opens and reads since the last frame: what the backoff grows with."""
        self._label = redact(config.source)
        self.source_size: tuple[int, int] | None = None

    def start(self) -> None:
        self._thread.start()

    def signal_stop(self) -> None:
        """Ask the thread to end after its current read, without waiting for it."""
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def status(self) -> CameraStatus:
        last = self._last_frame_at
        return CameraStatus(state=self.state, last_error=self.last_error, fps=round(self._fps, 1),  # type: ignore[arg-type]
                            frames=self.mailbox.frames, drops=self.mailbox.drops,
                            last_frame_age_s=None if last is None else round(time.monotonic() - last, 1))

    def _open(self) -> FrameSource:
        config = self.config
        source = self._source or open_source(config.source, config.width, config.height, config.realtime, config.loop)
        source.open()
        return source

    def _run(self) -> None:
        while not self._stop.is_set():
            source = None
            try:
                source = self._open()
                self._read(source)
            except SourceEnded:
                self.state = "ended"
                self._pulse.retire()
                log.info("camera source ended", camera=self.name, source=self._label)
                return
            except SourceError as error:
                self._failures += 1
                self.reconnects += 1
                self.state, self.last_error = "reconnecting", str(error)
                delay = min(self.config.reconnect_max_s, FIRST_RETRY_S * 2 ** (self._failures - 1)) * random.uniform(0.5, 1.0)
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
            self._pulse.beat()
            self._stop.wait(min(self._beat_every, max(0.0, deadline - time.monotonic())))

    def _read(self, source: FrameSource) -> None:
        last = None
        opened = time.monotonic()
        while not self._stop.is_set():
            self._pulse.beat()
            rgb = source.read(timeout=min(self._beat_every, self.config.stall_s))
            if rgb is None:
                silent = time.monotonic() - (last or opened)
                if silent >= self.config.stall_s:
                    raise SourceError(f"{self._label}: no frame for {silent:.0f} s "
                                      f"({'stalled' if last else 'opened, but silent'}; [cameras.{self.name}] stall_s)")
                continue
            now = time.monotonic()
            if last is None:  # the first frame since the source was opened: it works
                if self._failures:
                    log.info("camera reconnected", camera=self.name, source=self._label, attempts=self._failures)
                self._failures = 0
                self.state, self.last_error = "online", None
            self._last_frame_at = now
            if last is not None:
                self._fps = 0.9 * self._fps + 0.1 / max(now - last, 1e-6) if self._fps else 1 / max(now - last, 1e-6)
            last = now
            self.source_size = (rgb.shape[1], rgb.shape[0])
            seq = self.frames_read
            self.frames_read += 1
            model_frame = self.pipeline.process(rgb, now, getattr(source, "gate_luma", None))
            if model_frame is not None:
                self.mailbox.put(Frame(rgb=model_frame, camera=self.name, seq=seq, monotonic=now, wall=time.time()))
