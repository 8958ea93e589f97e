"""deploy/arm64-proof.sh as the suite runs it: started in the background as soon as the tests
are collected, its tests moved to the end (conftest.py's hooks). It is a quarter of an hour of
one core emulating apt and pip; the rest of the suite runs beside it rather than after it."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

FIXTURE = "arm64_proof"
"""The fixture that gives the proof's output folder; a test that asks for it waits for the proof."""
TIMEOUT_S = 2700

_STASH = pytest.StashKey["Arm64Proof"]()


class Arm64Proof:
    """The proof script running in a process group of its own, writing into ``out``."""

    def __init__(self, repo: Path) -> None:
        self.out = Path(tempfile.mkdtemp(prefix="edged-arm64-proof-"))
        self._log = (self.out / "proof.log").open("w")
        self._process = subprocess.Popen(["bash", str(repo / "deploy/arm64-proof.sh"), str(self.out)],
                                         stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self) -> int:
        """The script's exit status, once it has ended (killed past TIMEOUT_S)."""
        try:
            return self._process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            return self._process.wait()

    def log(self) -> str:
        return (self.out / "proof.log").read_text()

    def stop(self) -> None:
        """Ends the script and everything it started (the chroot's processes are in its group)."""
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
        self._log.close()


def wanted(items: list[pytest.Item]) -> bool:
    return any(FIXTURE in getattr(item, "fixturenames", ()) for item in items)


def last(items: list[pytest.Item]) -> None:
    """The proof's tests after every other (a stable sort keeps each group's order)."""
    items.sort(key=lambda item: FIXTURE in getattr(item, "fixturenames", ()))


def start(config: pytest.Config, repo: Path) -> None:
    """In the background, when the session will run the proof's tests and may (as root)."""
    if os.geteuid() == 0:
        config.stash[_STASH] = Arm64Proof(repo)


def running(config: pytest.Config, repo: Path) -> Arm64Proof:
    """The proof started with the session, or one started now (a test run on its own)."""
    if _STASH not in config.stash:
        config.stash[_STASH] = Arm64Proof(repo)
    return config.stash[_STASH]


def stop(config: pytest.Config) -> None:
    if _STASH in config.stash:
        config.stash[_STASH].stop()
