"""Under systemd, log events reach journald with their keys as fields an operator can filter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, clean_env, needs_root


@pytest.fixture(scope="module")
def journal() -> dict:
    needs_root()
    assert shutil.which("unshare"), "unshare(1) from util-linux is needed"
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, str(REPO / "tests/journald_namespace.py")],
        env=clean_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.root
def test_event_keys_become_journald_fields(journal: dict) -> None:
    assert journal["library"]["format"] == "journal"
    online = next(e for e in journal["library"]["entries"] if e["MESSAGE"] == "camera online")
    assert online["CAMERA"] == "front"
    assert online["FRAMES"] == "3"
    assert online["REQUEST_ID"] == "r1"
    assert online["PRIORITY"] == "6"
    assert online["SYSLOG_IDENTIFIER"] == "edged"


@pytest.mark.root
def test_levels_map_to_priorities_and_filter(journal: dict) -> None:
    messages = [e["MESSAGE"] for e in journal["library"]["entries"]]
    assert "below the level" not in messages
    failed = next(e for e in journal["library"]["entries"] if e["MESSAGE"] == "capture failed")
    assert failed["PRIORITY"] == "3"
    assert "ValueError: sensor unplugged" in failed["EXCEPTION"]


@pytest.mark.root
def test_daemon_started_by_systemd_logs_to_journald(journal: dict) -> None:
    assert journal["daemon"]["exit"] == 0
    messages = [e["MESSAGE"] for e in journal["daemon"]["entries"]]
    assert messages.index("starting") < messages.index("ready") < messages.index("stopped")
    ready = next(e for e in journal["daemon"]["entries"] if e["MESSAGE"] == "ready")
    assert ready["STATUS"].startswith("bus: 0 requests in progress; ")
