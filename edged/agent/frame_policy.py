"""What a camera's accepted frame calls for, the same in the daemon and in ``edged replay``:
each of the camera's rules on every frame, and a detection and a description each at most
once per its period (``detect_every_s``, ``describe_every_s``; 0 turns it off). Periods are
measured on the caller's clock: the daemon's monotonic time, or a clip's own."""

from __future__ import annotations

import math

from edged.agent.agent_settings import CameraTasksConfig

PERIODIC_TASKS = ("detect", "describe")


def period_of(task: str, config: CameraTasksConfig) -> float:
    return config.detect_every_s if task == "detect" else config.describe_every_s


class TaskPeriods:
    """When each camera's periodic tasks last ran."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] = {}

    def due(self, camera: str, config: CameraTasksConfig, now: float) -> list[str]:
        """The periodic tasks of ``camera`` that are on and whose period has passed at ``now``."""
        return [task for task in PERIODIC_TASKS
                if period_of(task, config) and now - self._last.get((camera, task), -math.inf) >= period_of(task, config)]

    def ran(self, camera: str, task: str, now: float) -> None:
        self._last[(camera, task)] = now
