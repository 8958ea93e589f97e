#!/usr/bin/env bash
# Sets up a checkout of edged for running and testing on Debian 12 or Raspberry Pi OS:
# the system packages edged builds and tests against, then a virtual environment with edged
# installed (editable) and its test tools. Safe to run again: it only adds what is missing.
# Needs root (or sudo) the first time, for apt.
#
#   bash deploy/dev-setup.sh                      .venv, with the distribution's python3
#   bash deploy/dev-setup.sh --python /root/.pyenv/versions/3.13.0/bin/python3 --venv .venv-3.13 \
#       --without-build                           no torch: the tests marked `build` cannot run
#
# The Python decides what the venv is made of, as on a device (deploy/python-env.sh): the
# distribution's python3 sees Debian's bindings and numpy; any other gets an isolated venv
# with the bindings built from PyPI. The build extra pins torch 2.13, whose cp313 wheels on
# PyPI need CUDA packages the index here does not serve: hence --without-build.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/python-env.sh

PYTHON="$EDGED_SYSTEM_PYTHON"
VENV=.venv
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --python) PYTHON="$2"; shift 2 ;;
        --venv) VENV="$2"; shift 2 ;;
        --without-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "dev-setup.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -x "$PYTHON" ] || { echo "dev-setup.sh: no Python at $PYTHON" >&2; exit 2; }

# systemd: systemd-analyze, systemd-journald, systemd-sysusers and systemd-tmpfiles, used by tests;
# debootstrap: the deploy tests install edged into a fresh Debian bookworm, and (with
# qemu-user-static and binfmt-support) into Debian bookworm arm64 under emulation.
# gir1.2-gst*: GStreamer's introspection data; the plugins give V4L2, RTSP, H.264
# (plugins-bad: h264parse; libav: avdec_h264) and the test sources. For the tests only: a real
# RTSP server (gst-rtsp-server) streaming H.264 from x264enc (plugins-ugly); python3-numexpr, a
# Debian-built C extension using numpy's C API (the venv must keep the numpy it was built
# against); mosquitto, the broker the MQTT door's tests start; gcc, pkg-config and the -dev
# packages, for install.sh's tests with another Python.
read -r -a PYTHON_PACKAGES <<<"$(python_packages "$PYTHON" | tr '\n' ' ')"
APT_PACKAGES=("${PYTHON_PACKAGES[@]}" python3 python3-venv python3-dev python3-numpy python3-numexpr
              gcc pkg-config libgirepository1.0-dev libcairo2-dev libsystemd-dev systemd util-linux
              python3-systemd python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gstreamer1.0-tools
              gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav
              debootstrap gstreamer1.0-plugins-ugly gir1.2-gst-rtsp-server-1.0 qemu-user-static binfmt-support
              mosquitto)

missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "==> installing system packages: ${missing[*]}"
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ -x "$VENV/bin/python" ] && [ "$(realpath -q "$VENV/bin/python")" != "$(realpath -q "$PYTHON")" ]; then
    echo "==> $VENV was made with another Python: making it anew"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV with $PYTHON"
    # shellcheck disable=SC2046  # no option, or one
    "$PYTHON" -m venv $(venv_options "$PYTHON") "$VENV"
fi

extras="test"
if [ "$BUILD" = 1 ]; then extras+=",build"; fi
python_extra="$(python_extras "$PYTHON")"
extras+="${python_extra:+,$python_extra}"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
constraint="$(numpy_constraint "$PYTHON")"
if [ -n "$constraint" ]; then
    echo "$constraint" > "$VENV/edged-constraints.txt"
    pip+=(--constraint "$VENV/edged-constraints.txt")
    if own_numpy "$VENV/bin/python"; then "$VENV/bin/python" -m pip uninstall --quiet --yes numpy; fi
fi
echo "==> installing edged[$extras] into $VENV"
"${pip[@]}" -e ".[$extras]"
echo "==> ready: $VENV/bin/edged --help"
