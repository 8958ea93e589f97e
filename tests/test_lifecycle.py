"""The daemon's life under systemd: ready, status, watchdog, reload and stop, over real
sd_notify datagrams to a socket standing where systemd's would be."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

from conftest import REPO, NotifySocket, write_config

EX_CONFIG = 78



def test_run_with_no_config_reports_ready_and_its_status(start_daemon, notify_socket: NotifySocket) -> None:
    daemon = start_daemon()
    ready = notify_socket.wait_for("READY", "1")
    # No config file: the embedded demo (a synthetic camera, the bundled model).
    assert re.fullmatch(r"bus: 0 requests in progress; 1 camera: demo \w+; model edged-tiny-vl-fp32, \d+ jobs? queued",
                        ready["STATUS"])
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_sigterm_sends_stopping_and_exits_zero(start_daemon, notify_socket: NotifySocket) -> None:
    daemon = start_daemon()
    notify_socket.wait_for("READY", "1")
    daemon.send(signal.SIGTERM)
    notify_socket.wait_for("STOPPING", "1")
    assert daemon.wait() == 0
    assert "stopped" in daemon.log()


def test_sigint_stops_like_sigterm(start_daemon, notify_socket: NotifySocket) -> None:
    daemon = start_daemon()
    notify_socket.wait_for("READY", "1")
    daemon.send(signal.SIGINT)
    notify_socket.wait_for("STOPPING", "1")
    assert daemon.wait() == 0


def test_invalid_config_exits_78_without_ready(start_daemon, notify_socket: NotifySocket, tmp_path: Path) -> None:
    config = write_config(tmp_path / "edged.toml", "[model]\nthreads = -1\n")
    daemon = start_daemon("--config", str(config))
    assert daemon.wait() == EX_CONFIG
    assert notify_socket.collect(0.2) == []
    assert f"{config}: model.threads: must be greater than or equal to 0, got -1" in daemon.log()


def test_watchdog_pings_keep_arriving_at_half_the_interval(start_daemon, notify_socket: NotifySocket) -> None:
    daemon = start_daemon(WATCHDOG_USEC="400000")
    notify_socket.wait_for("READY", "1")
    pings = [m for m in notify_socket.collect(2.0) if m.get("WATCHDOG") == "1"]
    # One every 0.2 s; allow for a slow machine, but far more than one per 0.4 s interval.
    assert len(pings) >= 6
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_no_watchdog_pings_when_watchdog_is_meant_for_another_process(start_daemon, notify_socket: NotifySocket) -> None:
    daemon = start_daemon(WATCHDOG_USEC="400000", WATCHDOG_PID="1")
    notify_socket.wait_for("READY", "1")
    assert [m for m in notify_socket.collect(1.0) if "WATCHDOG" in m] == []
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_watchdog_pings_stop_when_a_part_stops_reporting_progress(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    stall_file = tmp_path / "stall"
    config = write_config(tmp_path / "edged.toml", "")
    daemon = start_daemon(
        argv=[sys.executable, str(REPO / "tests/stalling_daemon.py"), str(config), str(stall_file)],
        WATCHDOG_USEC="400000",
    )
    assert notify_socket.wait_for("READY", "1")["STATUS"] == "making progress"
    assert len([m for m in notify_socket.collect(1.0) if m.get("WATCHDOG") == "1"]) >= 3

    stall_file.touch()
    notify_socket.collect(1.0)  # pings already due may still arrive while the stall ages
    late = notify_socket.collect(1.5)
    assert [m for m in late if m.get("WATCHDOG") == "1"] == []
    assert "watchdog ping withheld" in daemon.log()
    assert "stalling" in daemon.log()

    stall_file.unlink()  # progress again: pings resume
    notify_socket.wait_for("WATCHDOG", "1", timeout=5)
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_sighup_reloads_config_and_new_values_take_effect(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "edged.toml", '[log]\nlevel = "warning"\nformat = "json"\n')
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    assert daemon.log() == ""  # info events are below the configured level

    write_config(config, '[log]\nlevel = "info"\nformat = "json"\n')
    before = time.monotonic_ns() // 1000
    daemon.send(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING", "1")
    assert before <= int(reloading["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
    assert notify_socket.wait_for("READY", "1")["STATUS"].startswith("bus: 0 requests in progress; ")

    events = [json.loads(line) for line in daemon.log().splitlines()]
    reloaded = next(e for e in events if e["event"] == "config reloaded")
    assert reloaded["changed"] == ["log.level"]
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_a_reload_names_the_settings_only_a_restart_applies(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "edged.toml", '[log]\nformat = "json"\n')
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    write_config(config, '[log]\nformat = "json"\nlevel = "debug"\n[state]\nbudget_mb = 64\n[bus]\nstatus_interval_s = 5\n')
    daemon.send(signal.SIGHUP)
    notify_socket.wait_for("RELOADING", "1")
    notify_socket.wait_for("READY", "1")
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0
    events = [json.loads(line) for line in daemon.log().splitlines()]
    pending = [e for e in events if e["event"] == "these settings take effect at the next restart"]
    assert len(pending) == 1 and pending[0]["keys"] == ["bus.status_interval_s", "state.budget_mb"]  # not log.level


def test_invalid_config_on_reload_keeps_the_running_config(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "edged.toml", '[log]\nlevel = "info"\nformat = "json"\n')
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")

    # Valid except for one value: none of it may be applied, the log level included.
    write_config(config, '[log]\nlevel = "error"\nformat = "json"\n[cameras.front]\nsource = "synthetic"\nfps = -1\n')
    daemon.send(signal.SIGHUP)
    notify_socket.wait_for("RELOADING", "1")
    status = notify_socket.wait_for("READY", "1")["STATUS"]
    assert "rejected, previous config kept" in status
    assert f"{config}: cameras.front.fps: must be greater than 0, got -1" in status

    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0
    events = [json.loads(line) for line in daemon.log().splitlines()]
    rejected = [e for e in events if e["event"] == "config reload rejected"]
    assert [e["problem"] for e in rejected] == [f"{config}: cameras.front.fps: must be greater than 0, got -1"]
    # Still at level info after the rejected reload: the stop is logged.
    names = [e["event"] for e in events]
    assert names[-1] == "stopped" and "stop requested" in names[names.index("config reload rejected"):]


def test_a_fixed_config_after_a_rejected_reload_clears_the_warning(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "edged.toml", "")
    daemon = start_daemon("--config", str(config))
    notify_socket.wait_for("READY", "1")
    write_config(config, "[model]\nthreads = 'x'\n")
    daemon.send(signal.SIGHUP)
    assert "rejected" in notify_socket.wait_for("READY", "1")["STATUS"]
    write_config(config, "[model]\nthreads = 2\n")
    daemon.send(signal.SIGHUP)
    status = notify_socket.wait_for("READY", "1")["STATUS"]
    assert status.startswith("bus: 0 requests in progress; ") and "rejected" not in status
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_the_chosen_model_and_why_are_logged_at_start(start_daemon, notify_socket: NotifySocket, tmp_path: Path) -> None:
    import shutil

    from conftest import TINY

    models = tmp_path / "models"
    shutil.copytree(TINY / "text-int4", models / "small")
    daemon = start_daemon("--log-format", "json", "--set", "model.path=auto", "--set", f"model.models_dir={models}",
                          "--set", "model.headroom_mb=0")
    notify_socket.wait_for("READY", "1")
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0
    chosen = next(json.loads(line) for line in daemon.log().splitlines() if '"model chosen"' in line)
    assert chosen["path"] == str(models / "small")
    assert chosen["reason"].startswith("the largest of 1 installed package(s) that fit")


def test_a_model_path_with_no_package_stops_the_start_with_78(start_daemon, notify_socket: NotifySocket, tmp_path: Path) -> None:
    daemon = start_daemon("--set", f"model.path={tmp_path}")
    assert daemon.wait() == EX_CONFIG
    assert f"[model] path = '{tmp_path}': no model package there" in daemon.log()
    assert notify_socket.collect(0.2) == []


def test_the_running_daemon_answers_status_and_publishes_it(start_daemon, notify_socket: NotifySocket) -> None:
    from conftest import edged

    daemon = start_daemon("--set", "bus.status_interval_s=0.2")
    notify_socket.wait_for("READY", "1")
    status = edged("status", "--endpoint", daemon.control, "--json", "--timeout", "10")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["model"] == "edged-tiny-vl-fp32"
    assert json.loads(status.stdout)["execution_provider"] == "CPUExecutionProvider"  # what runs it, named
    watched = edged("watch", "--endpoint", daemon.events, "--count", "2", "--json", "edged.status", timeout=30)
    assert [json.loads(line)["kind"] for line in watched.stdout.splitlines()] == ["status", "status"]
    asked = edged("ask", "--endpoint", daemon.control, "--timeout", "30", "Anyone there?")
    assert asked.returncode == 0, asked.stderr  # the embedded demo camera, answered by the bundled model
    assert asked.stdout.strip()
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0


def test_status_shows_each_camera_and_a_lost_one_reconnecting(start_daemon, notify_socket: NotifySocket, tmp_path: Path) -> None:
    from conftest import edged

    config = write_config(tmp_path / "edged.toml", f"""
[cameras.front]
source = "synthetic"
[cameras.yard]
source = "file:{tmp_path}/not-there.mp4"
""")
    daemon = start_daemon("--config", str(config))
    ready = notify_socket.wait_for("READY", "1")
    assert ready["STATUS"].startswith("bus: 0 requests in progress; 2 cameras: front ")
    deadline = time.monotonic() + 15
    while True:
        status = json.loads(edged("status", "--endpoint", daemon.control, "--json", "--timeout", "10").stdout)
        if status["cameras"]["front"]["state"] == "online" and status["cameras"]["yard"]["state"] == "reconnecting":
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert "not-there.mp4: no such file" in status["cameras"]["yard"]["last_error"]
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0
