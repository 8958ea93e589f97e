"""Real parts for the tests: the edged command as a subprocess and a systemd notify socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import arm64_proof

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    arm64_proof.last(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    if arm64_proof.wanted(session.items):
        arm64_proof.start(session.config, REPO)


def pytest_sessionfinish(session: pytest.Session) -> None:
    arm64_proof.stop(session.config)


# Variables that would make a child behave as if systemd or a user had configured it.
_INHERITED_NOISE = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "INVOCATION_ID")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without edged or systemd settings, plus ``extra``."""
    env = {
        k: v for k, v in os.environ.items() if not k.upper().startswith("EDGED_") and k not in _INHERITED_NOISE
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def edged(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``edged ARGS`` to completion, as a user would type it."""
    return subprocess.run(
        [sys.executable, "-m", "edged", *args],
        env=env or clean_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )


def parse_notify(datagram: bytes) -> dict[str, str]:
    fields = {}
    for line in datagram.decode().splitlines():
        key, _, value = line.partition("=")
        fields[key] = value
    return fields


class NotifySocket:
    """A SOCK_DGRAM socket standing where systemd's would, collecting sd_notify messages."""

    def __init__(self) -> None:
        name = f"edged-test-{uuid.uuid4().hex}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + name)  # abstract namespace: no file to clean up
        self.address = "@" + name
        self.received: list[dict[str, str]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        self._socket.settimeout(max(timeout, 0.001))
        try:
            message = parse_notify(self._socket.recv(4096))
        except TimeoutError:
            return None
        self.received.append(message)
        return message

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20) -> dict[str, str]:
        """The next message that sets ``key`` (to ``value``); fails with what did arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.receive(deadline - time.monotonic())
            if message is not None and key in message and (value is None or message[key] == value):
                return message
        raise AssertionError(f"no {key}={value or '*'} within {timeout}s; received {self.received}")

    def collect(self, seconds: float) -> list[dict[str, str]]:
        """Every message that arrives in the next ``seconds``."""
        deadline = time.monotonic() + seconds
        messages = []
        while (remaining := deadline - time.monotonic()) > 0:
            message = self.receive(remaining)
            if message is not None:
                messages.append(message)
        return messages

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


class Daemon:
    """A daemon process started for a test; its log goes to a file the test can read."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.process = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    def log(self) -> str:
        return self.log_path.read_text()

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 20) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture
def start_daemon(tmp_path: Path, notify_socket: NotifySocket) -> Iterator:
    """Start ``edged run ARGS`` (or another command line) with NOTIFY_SOCKET set."""
    daemons: list[Daemon] = []

    def start(*args: str, argv: Sequence[str] | None = None, **env: str) -> Daemon:
        command = list(argv) if argv else [sys.executable, "-m", "edged", "run", *args]
        sockets = tmp_path / f"run{len(daemons)}"  # each daemon's bus on its own ipc sockets
        env = {"EDGED_BUS__EVENTS": f"ipc://{sockets}/events.sock",
               "EDGED_BUS__CONTROL": f"ipc://{sockets}/control.sock", "EDGED_STATE__DIR": str(sockets / "state"), **env}
        daemon = Daemon(
            command, clean_env(NOTIFY_SOCKET=notify_socket.address, **env), tmp_path / f"daemon{len(daemons)}.log"
        )
        daemon.control = env["EDGED_BUS__CONTROL"]
        daemon.events = env["EDGED_BUS__EVENTS"]
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        if daemon.process.poll() is None:
            daemon.send(signal.SIGKILL)
        daemon.kill()


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def wait_until(condition, timeout: float = 30, what: str = "the condition") -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def needs_root() -> None:
    """Skip on a developer's machine without root; CI runs as root, where this never skips."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("this test needs root, and CI runs as root: it must not be skipped there")
        pytest.skip("needs root (CI runs it as root)")


BUNDLED = REPO / "edged" / "models" / "tiny"
"""The committed tiny packages, for the CPU: the tests of CPU-only machinery use these."""
TINY = Path(os.environ.get("EDGED_TEST_PACKAGES") or BUNDLED)
"""The tiny packages the engine's tests run: the committed CPU ones, or on a machine with a
GPU the same model built for it (`edged models build --tiny --target cuda --out DIR`, then
`EDGED_TEST_PACKAGES=DIR pytest tests/test_engine.py -m "not build"`)."""
FLOAT = "fp16" if (TINY / "vl-fp16").is_dir() else "fp32"
"""The float packages' precision in TINY (vl-fp32 or, built for CUDA, vl-fp16)."""
LOGITS_ATOL = 1e-4 if FLOAT == "fp32" else 0.03
"""How far two paths' logits may differ where their kernels add up in another order (prompt
pieces of other sizes, a batch of rows): in float16, whose step at the tiny model's logits
(about 1 to 4) is 0.001 to 0.004, they differed by up to 0.014 on an H200."""
