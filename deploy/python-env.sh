# Which Python edged's virtual environment is made with, and what that brings with it.
# Sourced by deploy/install.sh and deploy/dev-setup.sh, so a device and a checkout decide alike.
#
# The distribution's own python3 is the default (Debian 12 and Raspberry Pi OS: 3.11; Debian 13:
# 3.13). Its venv sees the system's site packages: Debian's built GStreamer and systemd
# bindings, picamera2 and libcamera on Raspberry Pi OS, and numpy. The venv keeps that numpy,
# pinned by a constraint, and never gets a second one from PyPI: Debian's C extensions
# (picamera2's simplejpeg among them) are built against it, and a newer numpy in the venv
# breaks them at import ("compiled using NumPy 1.x").
#
# Any other interpreter (Ubuntu 22.04's python3.11 on JetPack 6, whose python3 is 3.10; a
# pyenv build) cannot load those compiled bindings: its venv is isolated, and the bindings are
# built from PyPI (the 'bindings' extra, and systemd-python, a requirement anyway).

EDGED_SYSTEM_PYTHON=/usr/bin/python3

python_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

version_at_least() {  # version_at_least VERSION MINIMUM
    [ "$(printf '%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

is_system_python() {
    [ "$(realpath -m "$1")" = "$(realpath -m "$EDGED_SYSTEM_PYTHON")" ]
}

# default_python SYSTEM_VERSION OS_ID OS_VERSION_ID: the interpreter edged's venv is made with
# when none is named (SYSTEM_VERSION is empty where python3 is not installed yet: it will be).
# Fails where the distribution has no Python 3.11 or newer to offer.
default_python() {
    local version="$1" id="$2" version_id="$3"
    if [ -z "$version" ] || version_at_least "$version" 3.11; then
        echo "$EDGED_SYSTEM_PYTHON"
    elif [ "$id" = ubuntu ] && [ "$version_id" = 22.04 ]; then
        # JetPack 6: PyPI serves onnxruntime >= 1.24 and onnxruntime-genai for cp311 and newer
        # only; Ubuntu 22.04's own archive (universe) has python3.11.
        echo /usr/bin/python3.11
    else
        return 1
    fi
}

# python_packages PYTHON: the Debian packages a venv made with PYTHON needs.
python_packages() {
    if is_system_python "$1"; then
        echo python3 python3-venv python3-gi python3-systemd python3-numpy
        return
    fi
    # compilers and headers for the bindings built from PyPI
    echo gcc pkg-config libgirepository1.0-dev libcairo2-dev libsystemd-dev
    case "$1" in  # the distribution's other Pythons: the interpreter, its venv module and headers
        /usr/bin/python3.*) echo "${1#/usr/bin/}" "${1#/usr/bin/}-venv" "${1#/usr/bin/}-dev" ;;
    esac
}

venv_options() {  # venv_options PYTHON: how `python -m venv` makes edged's venv
    if is_system_python "$1"; then echo --system-site-packages; fi
}

python_extras() {  # python_extras PYTHON: edged's extras that interpreter needs
    if ! is_system_python "$1"; then echo bindings; fi
}

numpy_constraint() {  # numpy_constraint PYTHON: "numpy==VERSION" pinning the distribution's numpy
    if is_system_python "$1"; then
        "$1" -c 'import numpy; print("numpy==" + numpy.__version__)' 2>/dev/null || true
    fi
}

# own_numpy VENV_PYTHON: whether that venv has a numpy of its own, shadowing the distribution's
# (an install made before the venv kept Debian's numpy): pip would keep it, so it goes.
own_numpy() {
    "$1" -c 'import sys, numpy; sys.exit(not numpy.__file__.startswith(sys.prefix + "/"))' 2>/dev/null
}
