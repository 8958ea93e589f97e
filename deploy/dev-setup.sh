#!/usr/bin/env bash
# Sets up a checkout of edged for running and testing on Debian 12 or Raspberry Pi OS:
# the system packages edged builds and tests against, then a virtual environment in .venv
# with edged installed (editable) and its test tools. Safe to run again: it only adds
# what is missing. Needs root (or sudo) the first time, for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-systemd: Debian's built systemd bindings (the venv sees them: nothing to compile).
# systemd: systemd-analyze, systemd-journald, systemd-sysusers and systemd-tmpfiles, used by tests;
# debootstrap: the deploy tests install edged into a fresh Debian bookworm, and (with
# qemu-user-static and binfmt-support) into Debian bookworm arm64 under emulation.
# python3-gi + gir1.2-gst*: GStreamer's Python bindings come from Debian, so the venv sees
# system packages; the plugins give V4L2, RTSP, H.264 (plugins-bad: h264parse; libav:
# avdec_h264) and the test sources. For the tests only: a real RTSP server (gst-rtsp-server)
# streaming H.264 from x264enc (plugins-ugly).
APT_PACKAGES=(python3 python3-venv python3-dev gcc python3-systemd systemd util-linux python3-gi
              gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base
              gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav debootstrap
              gstreamer1.0-plugins-ugly gir1.2-gst-rtsp-server-1.0 qemu-user-static binfmt-support)

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

# Debian's own Python: python3-gi (and picamera2 on Raspberry Pi OS) exist only for it.
if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
echo "==> installing edged into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
echo "==> ready: .venv/bin/edged --help"
