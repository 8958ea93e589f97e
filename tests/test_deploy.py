"""deploy/install.sh: a real install into a debootstrap'd Debian bookworm chroot, and its
upgrade, uninstall and purge paths into a prefix. Needs root (debootstrap, chroot, mounts);
CI runs as root and runs these."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, needs_root

INSTALL = REPO / "deploy/install.sh"
# A Python that is not the distribution's: pyenv's, which these machines have (shared/FACTS.md)
# and .ci/run checks for; it stands in for Ubuntu 22.04's python3.11 on JetPack 6.
OTHER_PYTHON = Path("/root/.pyenv/versions/3.13.0/bin/python3")


def run(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def snapshot(root: Path) -> dict[str, str]:
    """Every file outside the venv, with its content hash and mode."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "/opt/edged/venv/" not in str(path):
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest() + oct(path.stat().st_mode)
    return files


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs_root()
    prefix = tmp_path_factory.mktemp("prefix")
    run("--prefix", str(prefix), "--board", "jetson", "--model", str(REPO / "edged/models/tiny/text-int4"))
    return prefix


@pytest.mark.own_python
def test_install_puts_user_units_config_venv_and_model_in_place(installed: Path) -> None:
    assert (installed / "etc/systemd/system/edged.service").read_bytes() == (REPO / "systemd/edged.service").read_bytes()
    assert (installed / "etc/systemd/system/edged.service.d/jetson.conf").is_file()
    assert any(line.startswith("edged:") for line in (installed / "etc/passwd").read_text().splitlines())
    assert (installed / "var/lib/edged").is_dir() and (installed / "etc/edged/edged.d").is_dir()
    edged = installed / "opt/edged/venv/bin/edged"
    config = installed / "etc/edged/edged.toml"
    # config check also finds the package "auto" would run: the prefix stands in for /
    check = subprocess.run([str(edged), "config", "check", str(config),
                            "--set", f"model.models_dir={installed / 'var/lib/edged/models'}"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert 'path = "auto"' in config.read_text()  # a model was given, so "auto" has one to pick
    verify = subprocess.run([str(edged), "models", "verify", str(installed / "var/lib/edged/models/edged-tiny-text-int4")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


@pytest.mark.own_python
def test_install_puts_edged_on_path_its_readme_where_the_unit_says_and_enables_the_unit(installed: Path) -> None:
    assert (installed / "usr/local/bin/edged").readlink() == Path("/opt/edged/venv/bin/edged")
    documentation = next(line.split("=", 1)[1] for line in (REPO / "systemd/edged.service").read_text().splitlines()
                         if line.startswith("Documentation="))
    readme = installed / documentation.removeprefix("file:///")
    assert readme.read_bytes() == (REPO / "README.md").read_bytes()
    wanted = installed / "etc/systemd/system/multi-user.target.wants/edged.service"
    assert wanted.is_symlink() and wanted.readlink() == Path("/etc/systemd/system/edged.service")


@pytest.mark.own_python
def test_a_second_run_changes_nothing(installed: Path) -> None:
    before = snapshot(installed)
    result = run("--prefix", str(installed), "--board", "jetson", "--model", str(REPO / "edged/models/tiny/text-int4"))
    assert result.stdout.strip().endswith("nothing to change")
    assert snapshot(installed) == before


@pytest.mark.own_python
def test_an_upgrade_keeps_an_edited_config_and_the_state(installed: Path) -> None:
    config = installed / "etc/edged/edged.toml"
    config.write_text(config.read_text() + "\n[cameras.front]\nsource = \"v4l2:/dev/video0\"\n")
    edited = config.read_text()
    (installed / "var/lib/edged/sessions").mkdir(exist_ok=True)
    (installed / "var/lib/edged/sessions/kept.safetensors").write_bytes(b"state")
    (installed / "etc/systemd/system/edged.service").write_text("an older unit")
    result = run("--prefix", str(installed), "--board", "jetson")
    assert "1 change(s)" in result.stdout  # the unit, and nothing else
    assert config.read_text() == edited
    assert (installed / "var/lib/edged/sessions/kept.safetensors").read_bytes() == b"state"


def test_dry_run_changes_nothing_and_says_what_it_would_do(tmp_path: Path) -> None:
    needs_root()
    temporary = set(Path("/tmp").iterdir())
    result = run("--prefix", str(tmp_path), "--board", "auto", "--dry-run")
    assert "would: /usr/bin/python3 -m venv --system-site-packages" in result.stdout
    assert "change(s) would be made" in result.stdout
    assert list(tmp_path.iterdir()) == []
    assert result.stderr == ""  # this machine has no device tree: nothing said about it
    assert set(Path("/tmp").iterdir()) <= temporary | {tmp_path}  # no temp file left behind


@pytest.mark.own_python
def test_a_crash_of_config_check_is_reported_as_a_crash_not_as_a_bad_config(installed: Path) -> None:
    edged = installed / "opt/edged/venv/bin/edged"
    real = edged.read_bytes()
    try:
        edged.write_text("#!/bin/sh\nkill -SEGV $$\n")  # what onnxruntime did under emulation
        result = run("--prefix", str(installed), "--board", "jetson", check=False)
    finally:
        edged.write_bytes(real)
    assert result.returncode == 1
    assert "'edged config check' crashed (exit 139)" in result.stderr and "fix it" not in result.stderr


def numpy_location(python: Path) -> str:
    return subprocess.run([str(python), "-c", "import numpy; print(numpy.__file__)"], capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.own_python
def test_the_venv_keeps_debians_numpy_and_an_upgrade_drops_one_of_its_own(installed: Path) -> None:
    python = installed / "opt/edged/venv/bin/python"
    assert numpy_location(python).startswith("/usr/lib/python3/dist-packages/")
    # as an install made before the venv kept Debian's numpy left it
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "numpy>=2"], check=True, timeout=600)
    assert numpy_location(python).startswith(str(installed))
    (installed / "opt/edged/venv/.edged-source").write_text("an older edged")
    run("--prefix", str(installed), "--board", "jetson")
    assert numpy_location(python).startswith("/usr/lib/python3/dist-packages/")


def test_raspberry_pi_gets_picamera2_from_apt() -> None:
    needs_root()
    apt = run("--board", "rpi", "--dry-run")  # at / : shows the apt step, changes nothing
    assert "python3-picamera2" in apt.stdout and "python3-libcamera" in apt.stdout


def python_env(call: str) -> subprocess.CompletedProcess[str]:
    """``call`` run in bash after sourcing deploy/python-env.sh, which install.sh and dev-setup.sh share."""
    return subprocess.run(["bash", "-c", f'. "{REPO}/deploy/python-env.sh" && {call}'], capture_output=True, text=True)


def test_devices_get_built_packages_from_debian_and_an_h264_decoder() -> None:
    script = INSTALL.read_text()
    packages = script[script.index("local packages=("):script.index(")", script.index("local packages=("))].split()
    packages += python_env("python_packages /usr/bin/python3").stdout.split()
    assert {"python3-systemd", "python3-gi", "python3-numpy", "gstreamer1.0-plugins-bad", "gstreamer1.0-libav"} <= set(packages)
    assert not {"gcc", "python3-dev", "libsystemd-dev"} & set(packages)  # nothing is compiled on a device


@pytest.mark.parametrize(("system_python", "os_id", "os_version", "chosen"), [
    ("3.11", "debian", "12", "/usr/bin/python3"),     # Raspberry Pi OS bookworm, Debian 12
    ("3.13", "debian", "13", "/usr/bin/python3"),     # Debian 13
    ("", "debian", "12", "/usr/bin/python3"),         # python3 not installed yet: apt brings it
    ("3.10", "ubuntu", "22.04", "/usr/bin/python3.11"),  # JetPack 6: Ubuntu's own python3.11
    ("3.8", "ubuntu", "20.04", None),                 # JetPack 5: nothing to offer, say so
])
def test_the_python_a_board_gets(system_python: str, os_id: str, os_version: str, chosen: str | None) -> None:
    result = python_env(f'default_python "{system_python}" {os_id} {os_version}')
    assert (result.stdout.strip() or None) == chosen and (result.returncode == 0) == (chosen is not None)


def test_jetpack_6s_python_comes_with_what_builds_the_bindings_and_an_isolated_venv() -> None:
    old = Path("/root/.pyenv/versions/3.10.13/bin/python3")
    assert old.exists(), f"{old}: these machines have pyenv's 3.10 (shared/FACTS.md)"
    jetpack = f"EDGED_SYSTEM_PYTHON={old}; "  # as on Ubuntu 22.04, the system's python3 is 3.10
    packages = python_env(jetpack + "python_packages /usr/bin/python3.11").stdout.split()
    assert {"python3.11", "python3.11-venv", "python3.11-dev", "gcc", "libgirepository1.0-dev",
            "libcairo2-dev", "libsystemd-dev"} <= set(packages)
    assert "python3-gi" not in packages  # built for Ubuntu's python3 (3.10): it cannot load in 3.11
    assert python_env(jetpack + "venv_options /usr/bin/python3.11").stdout.strip() == ""
    assert python_env(jetpack + "python_extras /usr/bin/python3.11").stdout.strip() == "bindings"
    assert python_env(jetpack + f"venv_options {old}").stdout.strip() == "--system-site-packages"


def test_a_python_older_than_3_11_is_refused_with_what_to_do(tmp_path: Path) -> None:
    old = Path("/root/.pyenv/versions/3.10.13/bin/python3")
    assert old.exists(), f"{old}: these machines have pyenv's 3.10 (shared/FACTS.md)"
    result = run("--prefix", str(tmp_path), "--board", "generic", "--python", str(old), check=False)
    assert result.returncode == 2
    assert "is Python 3.10; edged needs 3.11 or newer" in result.stderr
    assert not (tmp_path / "opt/edged/venv").exists()


def test_a_python_the_units_sandbox_hides_is_refused() -> None:
    result = run("--dry-run", "--board", "generic", "--python", str(OTHER_PYTHON), check=False)
    assert result.returncode == 2 and "ProtectHome=yes" in result.stderr and "would:" not in result.stdout


@pytest.mark.own_python
def test_another_python_gets_an_isolated_venv_with_the_bindings_built_from_pypi(tmp_path: Path) -> None:
    """The JetPack 6 path (a Python that is not the distribution's), with pyenv's 3.13 standing
    in for Ubuntu's python3.11: nothing from Debian's site packages, GStreamer's and systemd's
    bindings built from PyPI, and the model runs."""
    needs_root()
    run("--prefix", str(tmp_path), "--board", "generic", "--python", str(OTHER_PYTHON), timeout=1500)
    venv = tmp_path / "opt/edged/venv"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    probe = subprocess.run([str(venv / "bin/python"), "-c", """
import sys, gi, numpy, systemd.journal
gi.require_version("Gst", "1.0")
from gi.repository import Gst
Gst.init(None)
print("%d.%d" % sys.version_info[:2])
for module in (gi, numpy, systemd.journal):
    print(module.__file__)
"""], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    version, *files = probe.stdout.split()
    assert version == "3.13" and all(file.startswith(str(venv)) for file in files), files
    works = subprocess.run([str(venv / "bin/edged"), "generate", "--model", str(REPO / "edged/models/tiny/text-int4"),
                            "--max-tokens", "3", "Hello"], capture_output=True, text=True, timeout=120)
    assert works.returncode == 0, works.stderr


@pytest.mark.own_python
def test_uninstall_keeps_config_and_state_and_purge_removes_everything(tmp_path: Path) -> None:
    needs_root()
    run("--prefix", str(tmp_path), "--board", "generic")
    run("--prefix", str(tmp_path), "--uninstall")
    assert not (tmp_path / "opt/edged").exists() and not (tmp_path / "etc/systemd/system/edged.service").exists()
    assert (tmp_path / "etc/edged/edged.toml").is_file() and (tmp_path / "var/lib/edged").is_dir()
    run("--prefix", str(tmp_path), "--uninstall", "--purge")
    assert not (tmp_path / "etc/edged").exists() and not (tmp_path / "var/lib/edged").exists()
    assert not any(line.startswith("edged:") for line in (tmp_path / "etc/passwd").read_text().splitlines())


# -- a real Debian bookworm, as a device would be -----------------------------------------------


CHROOT_SCRIPT = """
set -e
root="$1"
for dir in proc dev sys; do mkdir -p "$root/$dir"; done
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t sysfs sys "$root/sys"
# This machine's network as the chroot sees it: name resolution, and the trust store (the
# registries may be reached through an inspecting proxy whose CA only the host trusts).
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
env=(/usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
chroot "$root" "${env[@]}" bash /src/edged/deploy/install.sh --board generic \\
    --model /src/edged/edged/models/tiny/text-int4 > "$root/install-1.log" 2>&1
chroot "$root" "${env[@]}" bash /src/edged/deploy/install.sh --board generic \\
    --model /src/edged/edged/models/tiny/text-int4 > "$root/install-2.log" 2>&1
chroot "$root" /opt/edged/venv/bin/edged config check /etc/edged/edged.toml > "$root/check.log" 2>&1
chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin edged --version > "$root/on-path.log" 2>&1  # a login's PATH
chroot "$root" /opt/edged/venv/bin/python -c 'import systemd.journal; print(systemd.journal.__file__)' > "$root/systemd-bindings.log"
chroot "$root" dpkg-query -W -f='${Status}\n' gcc libsystemd-dev > "$root/compilers.log" 2>&1 || true
# A Debian-built C extension on numpy's C API (as picamera2's simplejpeg is on a Pi), used
# alongside everything edged imports, then the model run, all on the numpy the venv has.
chroot "$root" /opt/edged/venv/bin/python -c '
import numexpr, numpy
import cv2, onnx, onnxruntime, onnxruntime_genai, edged.cli, edged.engine.engine, edged.capture.sampler
values = numpy.arange(6.0)
assert (numexpr.evaluate("2 * values") == 2 * values).all()
print(numpy.__version__, numpy.__file__)' > "$root/numpy.log" 2>&1
chroot "$root" /opt/edged/venv/bin/edged generate --model /src/edged/edged/models/tiny/text-int4 --max-tokens 3 Hello \
    > "$root/generate.log" 2>&1
chroot "$root" "${env[@]}" bash /src/edged/deploy/install.sh --uninstall > "$root/uninstall.log" 2>&1
"""


@pytest.fixture(scope="module")
def bookworm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs_root()
    assert shutil.which("debootstrap"), "debootstrap is needed (apt install debootstrap; CI installs it)"
    root = tmp_path_factory.mktemp("bookworm") / "root"
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-numexpr,systemd,ca-certificates,git",
                    "bookworm", str(root), "http://deb.debian.org/debian"], check=True, capture_output=True, timeout=900)
    source = root / "src/edged"
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    result = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", CHROOT_SCRIPT, "-", str(root)],
                            capture_output=True, text=True, timeout=1500)
    logs = {name: (root / name).read_text() if (root / name).exists() else "" for name in
            ("install-1.log", "install-2.log", "check.log", "numpy.log", "generate.log", "uninstall.log")}
    assert result.returncode == 0, f"{result.stderr[-2000:]}\n" + "\n".join(f"--- {k}\n{v[-3000:]}" for k, v in logs.items())
    return root


@pytest.mark.root
@pytest.mark.own_python
def test_install_sh_in_a_bookworm_chroot_installs_runs_again_and_uninstalls(bookworm: Path) -> None:
    first = (bookworm / "install-1.log").read_text()
    assert "installing edged for board 'generic' into /" in first
    assert "systemd is not running here: edged is enabled and starts at the next boot" in first
    assert (bookworm / "etc/systemd/system/multi-user.target.wants/edged.service").is_symlink() is False  # uninstalled
    assert (bookworm / "on-path.log").read_text().startswith("edged ")
    # Debian's built bindings, seen through the venv: no compiler was installed for them
    assert (bookworm / "systemd-bindings.log").read_text().startswith("/usr/lib/python3/dist-packages/systemd/")
    assert "install ok installed" not in (bookworm / "compilers.log").read_text()
    # One numpy, Debian's, for its C extensions and for edged, whose model ran on it (a numpy in
    # the venv would have been imported first).
    version, location = (bookworm / "numpy.log").read_text().split()
    assert location.startswith("/usr/lib/python3/dist-packages/numpy/") and version.startswith("1.")
    assert (bookworm / "generate.log").read_text().strip()
    assert (bookworm / "install-2.log").read_text().strip().endswith("nothing to change")
    assert "valid" in (bookworm / "check.log").read_text()
    assert any(line.startswith("edged:") for line in (bookworm / "etc/passwd").read_text().splitlines())
    assert (bookworm / "var/lib/edged/models/edged-tiny-text-int4/edged-model.json").is_file()
    # uninstalled: the software is gone, config and state are kept
    assert not (bookworm / "opt/edged").exists()
    assert (bookworm / "etc/edged/edged.toml").is_file()
    assert "kept /etc/edged and /var/lib/edged" in (bookworm / "uninstall.log").read_text()


# -- Jetson: the GPU builds of onnxruntime stay the only ones ----------------------------------


def renamed_wheel(source: Path, name: str, folder: Path, requires: dict[str, str]) -> Path:
    """``source`` (a wheel) as distribution ``name``, same modules, its requirements renamed
    by ``requires``: the stand-in for a JetPack wheel of a GPU build, which PyPI does not have."""
    import base64
    import csv
    import io
    import zipfile

    old_name, version = source.name.split("-")[:2]
    new_name = name.replace("-", "_")
    target = folder / source.name.replace(f"{old_name}-", f"{new_name}-", 1)
    records = []
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for item in old.infolist():
            data = old.read(item)
            path = item.filename.replace(f"{old_name}-{version}.dist-info", f"{new_name}-{version}.dist-info")
            if path.endswith(".dist-info/RECORD"):
                record_path = path
                continue
            if path.endswith(".dist-info/METADATA"):
                data = re.sub(rb"^Name: .*$", f"Name: {name}".encode(), data, count=1, flags=re.MULTILINE)
                for old_requirement, new_requirement in requires.items():
                    data = re.sub(rf"^Requires-Dist: {old_requirement}\b".encode(),
                                  f"Requires-Dist: {new_requirement}".encode(), data, flags=re.MULTILINE)
            new.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append((path, f"sha256={digest}", str(len(data))))
        text = io.StringIO()
        csv.writer(text).writerows([*records, (record_path, "", "")])
        new.writestr(record_path, text.getvalue())
    return target


def test_with_jetson_wheels_the_gpu_builds_are_the_only_onnxruntime_in_the_venv(tmp_path: Path) -> None:
    needs_root()
    downloads, wheels = tmp_path / "downloads", tmp_path / "wheels"
    wheels.mkdir()
    import onnxruntime
    import onnxruntime_genai

    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(downloads),
                    f"onnxruntime=={onnxruntime.__version__}", f"onnxruntime-genai=={onnxruntime_genai.__version__}"],
                   check=True, timeout=600)
    for wheel in downloads.iterdir():
        if wheel.name.startswith("onnxruntime_genai-"):
            renamed_wheel(wheel, "onnxruntime-genai-cuda", wheels, {"onnxruntime": "onnxruntime-gpu"})
        else:
            renamed_wheel(wheel, "onnxruntime-gpu", wheels, {})
    prefix = tmp_path / "prefix"
    # the Python the wheels were fetched for: on the 3.13 run, a Python not the distribution's, as JetPack 6's
    run("--prefix", str(prefix), "--board", "jetson", "--wheels", str(wheels), "--python", str(Path(sys.executable).resolve()),
        timeout=1500)
    venv = prefix / "opt/edged/venv/bin/python"
    listed = subprocess.run([str(venv), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                            check=True).stdout
    names = {entry["name"].lower() for entry in json.loads(listed)}
    assert {"onnxruntime-gpu", "onnxruntime-genai-cuda", "edged"} <= names
    assert not {"onnxruntime", "onnxruntime-genai"} & names  # nothing from PyPI on top of them
    works = subprocess.run([str(prefix / "opt/edged/venv/bin/edged"), "generate", "--model",
                            str(REPO / "edged/models/tiny/text-int4"), "--max-tokens", "3", "Hello"],
                           capture_output=True, text=True, timeout=120)
    assert works.returncode == 0, works.stderr
