"""The daemon inside what its unit lets it see: ProcSubset=pid hides /proc/meminfo, /proc/stat
and every other file in /proc that is not a process's; memory limits come from the cgroup."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, TINY, NotifySocket, free_port, needs_root

from edged.models.installed import available_memory_mb


def test_the_installed_example_config_starts_under_proc_subset_pid(
    start_daemon, notify_socket: NotifySocket, tmp_path: Path
) -> None:
    needs_root()
    models = tmp_path / "models"
    shutil.copytree(TINY / "vl-int4", models / "edged-tiny-vl-int4")
    config = tmp_path / "edged.toml"
    example = (REPO / "deploy/edged.toml").read_text()
    assert 'path = "auto"' in example  # the case that broke: "auto" reads the memory available
    port = free_port()
    config.write_text(example.replace("[model]\n", f'[model]\nmodels_dir = "{models}"\n', 1)
                      + f'\n[http]\nenabled = true\nlisten = "127.0.0.1:{port}"\n')
    inside = (f"mount -t proc -o subset=pid,hidepid=invisible proc /proc && test ! -e /proc/meminfo "
              f"&& exec {sys.executable} -m edged run --config {config}")
    daemon = start_daemon(argv=["unshare", "--mount", "--pid", "--fork", "--mount-proc", "sh", "-c", inside])
    ready = notify_socket.wait_for("READY", "1", timeout=60)
    assert "model edged-tiny-vl-int4" in ready["STATUS"]
    # The process's own metrics, read where /proc/stat is hidden (prometheus-client's own
    # process collector needs it, and would report nothing).
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    assert re.search(r"^process_resident_memory_bytes [0-9.e+]+$", metrics, re.MULTILINE), metrics[-2000:]
    children = Path(f"/proc/{daemon.process.pid}/task/{daemon.process.pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGTERM)  # the daemon itself; unshare passes on its exit status
    assert daemon.wait() == 0
    assert "largest of 1 installed package(s) that fit" in daemon.log()


def fake_system(tmp_path: Path, meminfo: str | None, limits: dict[str, tuple[str, int]]) -> tuple[Path, Path]:
    """A /proc and a /sys/fs/cgroup as the kernel lays them out, for a process in
    /system.slice/edged.service, with ``limits``: cgroup -> (memory.max, memory.current)."""
    proc, cgroups = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("0::/system.slice/edged.service\n")
    if meminfo is not None:
        (proc / "meminfo").write_text(meminfo)
    for group, (limit, current) in limits.items():
        folder = cgroups / group.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "memory.max").write_text(f"{limit}\n")
        (folder / "memory.current").write_text(f"{current}\n")
    return proc, cgroups


MEMINFO = "MemTotal:        8000000 kB\nMemFree:          500000 kB\nMemAvailable:    6144000 kB\n"


@pytest.mark.parametrize(("meminfo", "limits", "expected"), [
    (MEMINFO, {}, 6000),
    (MEMINFO, {"/system.slice/edged.service": ("max", 0), "/system.slice": ("max", 0)}, 6000),
    (MEMINFO, {"/system.slice/edged.service": (str(2048 << 20), 48 << 20)}, 2000),
    (MEMINFO, {"/system.slice/edged.service": ("max", 0), "/system.slice": (str(1024 << 20), 24 << 20)}, 1000),
])
def test_memory_for_auto_is_the_least_of_the_system_and_the_cgroup_limits(
    tmp_path: Path, meminfo: str, limits: dict[str, tuple[str, int]], expected: int
) -> None:
    proc, cgroups = fake_system(tmp_path, meminfo, limits)
    assert available_memory_mb(proc, cgroups) == expected


def test_without_meminfo_memory_for_auto_comes_from_sysinfo_and_still_the_cgroup(tmp_path: Path) -> None:
    proc, cgroups = fake_system(tmp_path, None, {"/system.slice/edged.service": (str(64 << 20), 0)})
    assert available_memory_mb(proc, cgroups) == 64
    proc, cgroups = fake_system(tmp_path / "free", None, {})
    free_mb = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    assert abs(available_memory_mb(proc, cgroups) - free_mb) < 256
