"""What the agent knows between inference jobs: each camera's recent frames and the model's
newest read of each, the last detection, and the rules' trackers. Only the inference thread
writes it, and it always replaces a mapping whole rather than changing one in place, so the bus
thread may read it at any moment (rules.list, snapshot, status)."""

from __future__ import annotations

from collections.abc import Callable

from edged.agent.rules import RuleTracker
from edged.agent.tasks import FrameTasks, ReadFrame
from edged.bus.schema import Detection
from edged.capture.frame import Frame


class AgentMemory:
    def __init__(self, trackers: dict[str, list[RuleTracker]]) -> None:
        self.trackers = trackers
        self.recent: dict[str, tuple[Frame, ...]] = {}
        """Each camera's last [agent] frames_kept accepted frames, newest last."""
        self.detections: dict[str, Detection] = {}
        self._reads: dict[str, ReadFrame] = {}
        self._reading: dict[str, Frame] = {}
        """Each camera's frame whose read is in progress (its pieces let questions in between)."""

    def remember(self, frame: Frame, keep: int) -> None:
        recent = (*self.recent.get(frame.camera, ()), frame)
        self.recent = {**self.recent, frame.camera: recent[-keep:]}

    def newest(self, camera: str | None) -> Frame | None:
        """The newest accepted frame of ``camera`` (of any camera when None)."""
        name = camera if camera is not None else next(iter(self.recent), None)
        recent = self.recent.get(name, ()) if name is not None else ()
        return recent[-1] if recent else None

    def kept(self, camera: str, seq: int) -> Frame | None:
        """Frame ``seq`` of ``camera``, if it is among the frames kept."""
        return next((frame for frame in self.recent.get(camera, ()) if frame.seq == seq), None)

    def read(self, frame: Frame, tasks: FrameTasks, between: Callable[[], None] | None = None) -> ReadFrame:
        """The model's read of ``frame``, made once however many tasks ask for it; ``between``
        runs between its pieces."""
        if not self.is_read(frame):
            self._reading = {**self._reading, frame.camera: frame}
            try:
                read = tasks.read(frame, between)
            finally:
                self._reading = {name: reading for name, reading in self._reading.items() if name != frame.camera}
            self._reads = {**self._reads, frame.camera: read}
        return self._reads[frame.camera]

    def is_read(self, frame: Frame) -> bool:
        """Whether ``frame`` is its camera's last finished read: a task on it needs no read."""
        read = self._reads.get(frame.camera)
        return read is not None and read.frame is frame

    def newest_read(self, camera: str | None, tasks: FrameTasks, reuse_within_s: float = 0.0,
                    between: Callable[[], None] | None = None) -> ReadFrame | None:
        """The newest frame of ``camera`` (of any camera when None), read; or the camera's
        last finished read, when its frame was captured at most ``reuse_within_s`` before the
        newest, so that a question need not wait for a read. Asked between the pieces of the
        newest frame's own read, that last finished read too: a question never reads the
        frame being read a second time."""
        frame = self.newest(camera)
        if frame is None:
            return None
        earlier = self._reads.get(frame.camera)
        if earlier is not None and (frame.monotonic - earlier.frame.monotonic <= reuse_within_s
                                    or self._reading.get(frame.camera) is frame):
            return earlier
        return self.read(frame, tasks, between)

    def forget_reads(self) -> None:
        """Reads made under a system prompt no longer in force."""
        self._reads = {}

    def set_trackers(self, camera: str, trackers: list[RuleTracker]) -> None:
        self.trackers = {**self.trackers, camera: trackers}

    def set_detection(self, camera: str, detection: Detection) -> None:
        self.detections = {**self.detections, camera: detection}
