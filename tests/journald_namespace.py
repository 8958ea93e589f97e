"""A real systemd-journald in a private mount namespace, edged's logs sent to it, read back.

test_journald.py runs this as root: ``unshare -m --propagation private python THIS``. It
prints one JSON object with the journal entries it read; the test asserts on them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

JOURNALD = next(p for p in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald") if Path(p).exists())
SOCKET = Path("/run/systemd/journal/socket")
FIELDS = ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CAMERA", "FRAMES", "REQUEST_ID", "EXCEPTION", "STATUS")


def private_journald() -> subprocess.Popen:
    # Fresh, empty /run and /var/log seen only by this namespace: the host's journal (if
    # any) is neither read nor written.
    for target in ("/run", "/var/log"):
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", target], check=True)
    Path("/var/log/journal").mkdir()
    journald = subprocess.Popen([JOURNALD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not SOCKET.exists():
        if time.monotonic() > deadline:
            raise SystemExit("systemd-journald did not create its socket")
        time.sleep(0.02)
    return journald


def entries(timeout: float = 5, until: str | None = None, **match: str) -> list[dict[str, str]]:
    """Journal entries matching ``match``; waits until one has MESSAGE ``until``, if given."""
    from systemd import journal

    deadline = time.monotonic() + timeout
    while True:
        reader = journal.Reader()
        for key, value in match.items():
            reader.add_match(**{key: value})
        found = [{k: str(e[k]) for k in FIELDS if k in e} for e in reader]
        reader.close()
        done = any(e["MESSAGE"] == until for e in found) if until else bool(found)
        if done or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def log_through_edged() -> dict:
    """edged.logs configured as under systemd, then a few events with context keys."""
    import structlog

    from edged.logs import LogConfig, configure_logging

    os.environ["INVOCATION_ID"] = "0123456789abcdef0123456789abcdef"
    chosen = configure_logging(LogConfig(level="info", format="auto"))
    log = structlog.get_logger()
    log.debug("below the level", camera="front")
    log.info("camera online", camera="front", frames=3, request_id="r1")
    try:
        raise ValueError("sensor unplugged")
    except ValueError:
        log.exception("capture failed", camera="front")
    return {"format": chosen, "entries": entries(until="capture failed", CAMERA="front")}


def run_edged_under_journald() -> dict:
    """`edged run` started as systemd would start it, stopped with SIGTERM."""
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env["INVOCATION_ID"] = "fedcba9876543210fedcba9876543210"
    env["EDGED_STATE__DIR"] = "/run/edged-state"  # inside this namespace's private /run
    daemon = subprocess.Popen([sys.executable, "-m", "edged", "run"], env=env)
    entries(timeout=20, until="ready", SYSLOG_IDENTIFIER="edged")
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(timeout=20)
    return {"exit": code, "entries": entries(until="stopped", SYSLOG_IDENTIFIER="edged")}


def main() -> None:
    journald = private_journald()
    try:
        result = {"library": log_through_edged(), "daemon": run_edged_under_journald()}
    finally:
        journald.terminate()
        journald.wait()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
