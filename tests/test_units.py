"""The systemd files pass systemd's own checks, and create what the daemon needs."""

from __future__ import annotations

import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

UNIT = REPO / "systemd/edged.service"


def unit_setting(name: str) -> list[str]:
    return re.findall(rf"^{name}=(.*)$", UNIT.read_text(), flags=re.MULTILINE)


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root directory with the unit installed and its commands where ExecStart= says."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/edged.service")
    for line in unit_setting("ExecStart") + unit_setting("ExecReload"):
        command = Path(line.split()[0])
        staged = root / command.relative_to("/")
        staged.parent.mkdir(parents=True, exist_ok=True)
        source = shutil.which(command.name, path=str(Path(sys.executable).parent)) or shutil.which(command.name)
        assert source, f"{command.name} is not installed here to stage"
        shutil.copy(source, staged)
    return root


def test_unit_passes_systemd_analyze_verify_with_nothing_on_stderr(unit_root: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={unit_root}", "edged.service"], capture_output=True, text=True
    )
    # systemd-analyze exits 0 on unknown keys and bad values and only warns: any output fails.
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_verify_does_catch_a_mistake_in_the_unit(unit_root: Path) -> None:
    unit = unit_root / "etc/systemd/system/edged.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=on-failur"))
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={unit_root}", "edged.service"], capture_output=True, text=True
    )
    assert "on-failur" in result.stderr


def test_unit_is_hardened_to_an_exposure_of_at_most_2(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(UNIT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for edged\.service: (\d+\.\d+)", result.stdout)
    assert found, result.stdout[-500:]
    assert float(found.group(1)) <= 2.0


def test_unit_speaks_notify_and_does_not_restart_on_a_bad_config_or_a_damaged_model() -> None:
    from edged.config import EX_CONFIG
    from edged.parts import EX_DATAERR

    assert unit_setting("Type") == ["notify"]
    assert unit_setting("RestartPreventExitStatus") == [f"{EX_CONFIG} {EX_DATAERR}"]
    assert unit_setting("ExecReload") == ["/bin/kill -HUP $MAINPID"]


def test_sysusers_and_tmpfiles_create_the_user_and_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib/sysusers.d").mkdir(parents=True)
    (root / "usr/lib/tmpfiles.d").mkdir(parents=True)
    shutil.copy(REPO / "systemd/edged.sysusers.conf", root / "usr/lib/sysusers.d/edged.conf")
    shutil.copy(REPO / "systemd/edged.tmpfiles.conf", root / "usr/lib/tmpfiles.d/edged.conf")
    subprocess.run(["systemd-sysusers", f"--root={root}"], check=True, capture_output=True)
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create"], check=True, capture_output=True)

    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    edged_uid, edged_gid = int(users["edged"][2]), int(users["edged"][3])
    assert users["edged"][5] == "/var/lib/edged"
    assert "edged" in groups["video"][3].split(",")
    state = (root / "var/lib/edged").stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (edged_uid, edged_gid, 0o750)
    assert (root / "etc/edged/edged.d").is_dir()
    # The host's account database was not touched.
    with pytest.raises(KeyError):
        pwd.getpwnam("edged")
