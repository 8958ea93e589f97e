#!/usr/bin/env bash
# Install, upgrade or remove edged on Raspberry Pi OS (bookworm), JetPack 6, or Debian.
#
#   sudo deploy/install.sh                          install or upgrade from this checkout
#   sudo deploy/install.sh --model ./qwen3.5-0.8b-int4-cpu
#   sudo deploy/install.sh --board jetson --wheels /media/usb/wheels
#   sudo deploy/install.sh --python /usr/bin/python3.12
#   sudo deploy/install.sh --dry-run                say what would change, change nothing
#   sudo deploy/install.sh --uninstall              remove edged, keep /etc/edged and its state
#   sudo deploy/install.sh --uninstall --purge      remove everything, the edged user too
#
# Safe to run again: each step changes only what differs, an edited /etc/edged/edged.toml is
# never overwritten, and the state directory is never touched except by --purge.
set -euo pipefail

SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=deploy/python-env.sh
. "$SOURCE/deploy/python-env.sh"
PREFIX=/
BOARD=auto
MODEL=""
WHEELS=""
PYTHON=""
DRY_RUN=0
UNINSTALL=0
PURGE=0
APT=1
CHANGES=0

usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; cat <<'EOF'

options:
  --board auto|rpi|jetson|generic   what to install for (auto: read the device tree)
  --model NAME|DIR                  install a model package (a catalog name, a URL or a folder)
  --wheels DIR                      JetPack: onnxruntime-gpu and onnxruntime-genai-cuda wheels
                                    (PyPI has no aarch64 CUDA build); without it, CPU wheels
  --python PATH                     the Python (3.11 or newer) for the venv; default: the
                                    distribution's python3, or on Ubuntu 22.04 (JetPack 6, whose
                                    python3 is 3.10) Ubuntu's python3.11, installed from apt.
                                    Any but the distribution's python3 gets an isolated venv with
                                    GStreamer's and systemd's bindings built from PyPI
  --prefix DIR                      install under DIR instead of / (images, tests); no apt, no systemctl
  --source DIR                      the edged source tree to install (default: this checkout)
  --no-apt                          do not install Debian packages
  --dry-run                         print what would change, change nothing
  --uninstall [--purge]             remove edged (and with --purge its config, state and user)
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --board) BOARD="$2"; shift 2 ;;
        --model) MODEL="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; APT=0; shift 2 ;;
        --source) SOURCE="$2"; shift 2 ;;
        --no-apt) APT=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ] && { echo "install.sh: --purge goes with --uninstall" >&2; exit 2; }
PREFIX="${PREFIX%/}"
ROOT="${PREFIX:-/}"
VENV="$PREFIX/opt/edged/venv"
ETC="$PREFIX/etc/edged"
STATE="$PREFIX/var/lib/edged"
UNIT_DIR="$PREFIX/etc/systemd/system"

say() { echo "==> $*"; }
die() { local status="$1"; shift; echo "install.sh: $*" >&2; exit "$status"; }
# Run a command that changes the system, or only print it with --dry-run.
change() {
    CHANGES=$((CHANGES + 1))
    if [ "$DRY_RUN" = 1 ]; then echo "would: $*"; else "$@"; fi
}
# Copy a file into place unless the same content is already there.
place() {  # place MODE SOURCE TARGET
    local mode="$1" from="$2" to="$3"
    if [ -f "$to" ] && cmp -s "$from" "$to" && [ "$(stat -c %a "$to")" = "$mode" ]; then return; fi
    change install -D -m "$mode" "$from" "$to"
}
systemd_running() { [ "$ROOT" = / ] && [ -d /run/systemd/system ]; }

detect_board() {
    if [ "$BOARD" != auto ]; then echo "$BOARD"; return; fi
    if [ -f "$PREFIX/etc/nv_tegra_release" ]; then echo jetson; return; fi
    if { tr -d '\0' < /proc/device-tree/model; } 2>/dev/null | grep -q "Raspberry Pi"; then echo rpi; return; fi
    echo generic
}

choose_python() {
    if [ -z "$PYTHON" ]; then
        local version="" os=()
        [ -x "$EDGED_SYSTEM_PYTHON" ] && version="$(python_version "$EDGED_SYSTEM_PYTHON")"
        # shellcheck source=/dev/null
        read -r -a os <<<"$([ -f "$PREFIX/etc/os-release" ] && . "$PREFIX/etc/os-release"; echo "${ID:-} ${VERSION_ID:-}")"
        PYTHON="$(default_python "$version" "${os[0]:-}" "${os[1]:-}")" ||
            die 2 "this system's python3 is $version, and edged needs Python 3.11 or newer (onnxruntime-genai" \
                  "has no wheels for older ones): install one and pass it with --python PATH"
    fi
    # The unit's sandbox (ProtectHome=yes) hides /home and /root from the daemon.
    case "$(realpath -m "$PYTHON")" in
        /home/*|/root/*) [ -n "$PREFIX" ] ||
            die 2 "--python $PYTHON: the service cannot run an interpreter under /home or /root (its unit" \
                  "has ProtectHome=yes): use one installed under /usr, /usr/local or /opt" ;;
    esac
}

check_python() {  # after apt, which may have installed it
    [ "$DRY_RUN" = 1 ] && [ ! -x "$PYTHON" ] && return
    local version; version="$(python_version "$PYTHON")"
    [ -n "$version" ] || die 2 "--python $PYTHON: not a Python interpreter"
    version_at_least "$version" 3.11 ||
        die 2 "--python $PYTHON is Python $version; edged needs 3.11 or newer (onnxruntime-genai has no wheels for older ones)"
}

install_packages() {
    # The interpreter's own (deploy/python-env.sh): with Debian's python3, its built GStreamer
    # and systemd bindings and numpy, so no compiler on the device. Plugins-bad and libav:
    # h264parse and avdec_h264, for H.264 IP cameras.
    local packages=(systemd gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gstreamer1.0-plugins-base
                    gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav gstreamer1.0-tools)
    local python_needs=()
    read -r -a python_needs <<<"$(python_packages "$PYTHON" | tr '\n' ' ')"
    packages+=("${python_needs[@]}")
    case "$1" in
        rpi) packages+=(python3-picamera2 python3-libcamera) ;;
        jetson) packages+=(nvidia-l4t-gstreamer) ;;  # nvarguscamerasrc and nvvidconv
    esac
    local missing=()
    for package in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "Debian packages: ${missing[*]}"
        change apt-get update -qq
        change env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

source_stamp() {  # identifies the edged being installed: a git commit and any local edits, or the files
    if git -C "$SOURCE" rev-parse HEAD >/dev/null 2>&1; then
        { git -C "$SOURCE" rev-parse HEAD; git -C "$SOURCE" diff HEAD; } | sha256sum | cut -c1-32
    else
        (cd "$SOURCE" && find edged pyproject.toml -type f -printf '%P %s %T@\n' | sort | sha256sum | cut -c1-32)
    fi
}

install_venv() {
    local anew=0
    if [ -e "$VENV" ] && [ "$(realpath -q "$VENV/bin/python")" != "$(realpath -q "$PYTHON")" ]; then
        say "virtual environment $VENV was made with another Python: making it anew"
        change rm -rf "$VENV"
        anew=1
    fi
    if [ "$anew" = 1 ] || [ ! -x "$VENV/bin/python" ]; then
        local options; options="$(venv_options "$PYTHON")"
        if [ -n "$options" ]; then
            say "virtual environment $VENV with $PYTHON (sees Debian's GStreamer bindings, numpy and picamera2)"
        else
            say "virtual environment $VENV with $PYTHON (isolated: bindings built from PyPI)"
        fi
        # shellcheck disable=SC2086  # no option, or one
        change "$PYTHON" -m venv $options "$VENV"
    fi
    local stamp; stamp="$(source_stamp)"
    if [ -f "$VENV/.edged-source" ] && [ "$(cat "$VENV/.edged-source")" = "$stamp" ]; then return; fi
    say "edged from $SOURCE into $VENV"
    local pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
    local constraint; constraint="$(numpy_constraint "$PYTHON")"
    if [ -n "$constraint" ]; then  # the distribution's numpy, which its C extensions are built against
        [ "$DRY_RUN" = 1 ] || echo "$constraint" > "$VENV/edged-constraints.txt"
        pip+=(--constraint "$VENV/edged-constraints.txt")
        if own_numpy "$VENV/bin/python"; then
            change "$VENV/bin/python" -m pip uninstall --quiet --yes numpy
        fi
    fi
    local extras; extras="$(python_extras "$PYTHON")"
    local edged="$SOURCE${extras:+[$extras]}"
    if [ "$1" = jetson ] && [ -n "$WHEELS" ]; then
        # The GPU builds are other distributions of the same modules: installed as edged's
        # requirements, pip would put PyPI's CPU onnxruntime and onnxruntime-genai over them.
        # So: the GPU wheels, edged's other requirements, then edged without its own.
        local requirements=()
        mapfile -t requirements < <("$PYTHON" "$SOURCE/deploy/requirements.py" "$SOURCE/pyproject.toml" \
                                    --without onnxruntime onnxruntime-genai --extras $extras)
        local gpu_wheels=("$WHEELS"/onnxruntime_gpu-*.whl "$WHEELS"/onnxruntime_genai_cuda-*.whl)
        for wheel in "${gpu_wheels[@]}"; do
            [ -f "$wheel" ] || { echo "install.sh: $WHEELS holds no ${wheel##*/}: put the JetPack wheels of" \
                                     "onnxruntime-gpu and onnxruntime-genai-cuda there" >&2; exit 2; }
        done
        # Their own requirements come from the folder when it has them, else from the index.
        change "${pip[@]}" --find-links "$WHEELS" "${gpu_wheels[@]}"
        change "${pip[@]}" "${requirements[@]}"
        change "${pip[@]}" --upgrade --no-deps "$SOURCE"
    else
        change "${pip[@]}" --upgrade "$edged"
    fi
    if [ "$DRY_RUN" = 0 ]; then echo "$stamp" > "$VENV/.edged-source"; fi
}

install_system_files() {
    place 644 "$SOURCE/systemd/edged.service" "$UNIT_DIR/edged.service"
    if [ "$1" = jetson ]; then
        place 644 "$SOURCE/deploy/jetson.conf" "$UNIT_DIR/edged.service.d/jetson.conf"
    fi
    place 644 "$SOURCE/systemd/edged.sysusers.conf" "$PREFIX/usr/lib/sysusers.d/edged.conf"
    place 644 "$SOURCE/systemd/edged.tmpfiles.conf" "$PREFIX/usr/lib/tmpfiles.d/edged.conf"
    if ! grep -q '^edged:' "$PREFIX/etc/passwd" 2>/dev/null; then
        say "the edged user"
        change systemd-sysusers --root="$ROOT" "$PREFIX/usr/lib/sysusers.d/edged.conf"
    fi
    if [ ! -d "$STATE" ] || [ ! -d "$ETC/edged.d" ]; then
        change systemd-tmpfiles --root="$ROOT" --create "$PREFIX/usr/lib/tmpfiles.d/edged.conf"
    fi
    if [ ! -e "$ETC/edged.toml" ]; then
        say "example configuration $ETC/edged.toml"
        if [ -n "$MODEL" ]; then
            change install -D -m 644 "$SOURCE/deploy/edged.toml" "$ETC/edged.toml"
        else  # no package installed yet: the bundled tiny model, so edged starts
            local bundled
            bundled="$(sed 's/^path = "auto"/path = "bundled"/' "$SOURCE/deploy/edged.toml")"
            change install -D -m 644 /dev/stdin "$ETC/edged.toml" <<<"$bundled"
        fi
    fi
    # What the unit's Documentation= names, and `edged` on every user's PATH.
    place 644 "$SOURCE/README.md" "$PREFIX/opt/edged/share/doc/edged/README.md"
    if [ "$(readlink "$PREFIX/usr/local/bin/edged" 2>/dev/null)" != /opt/edged/venv/bin/edged ]; then
        change install -d "$PREFIX/usr/local/bin"
        change ln -sfn /opt/edged/venv/bin/edged "$PREFIX/usr/local/bin/edged"
    fi
}

install_model() {
    [ -n "$MODEL" ] || return 0
    local name
    name="$("$VENV/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["name"])' "$MODEL/edged-model.json" 2>/dev/null || echo "")"
    if [ -n "$name" ] && [ -d "$STATE/models/$name" ] && "$VENV/bin/edged" models verify "$STATE/models/$name" >/dev/null 2>&1; then
        return
    fi
    say "model $MODEL"
    change "$VENV/bin/edged" models pull "$MODEL" --models-dir "$STATE/models"
}

check_config() {
    [ "$DRY_RUN" = 1 ] && return
    local status=0
    "$VENV/bin/edged" config check "$ETC/edged.toml" --set "model.models_dir=$STATE/models" >/dev/null || status=$?
    case "$status" in
        0) ;;
        78) echo "install.sh: $ETC/edged.toml does not pass 'edged config check' (above): fix it, then run install.sh again" >&2
            exit 78 ;;
        *) echo "install.sh: 'edged config check' crashed (exit $status), so the install is broken, not the config:" \
                "run '$VENV/bin/edged config check $ETC/edged.toml' to see why" >&2
           exit 1 ;;
    esac
}

start_service() {
    if systemd_running; then
        change systemctl daemon-reload
        if systemctl is-active --quiet edged; then
            change systemctl restart edged
        else
            change systemctl enable --now edged
        fi
    elif [ ! -L "$UNIT_DIR/multi-user.target.wants/edged.service" ]; then
        # An image being built, or a chroot: enable it offline, so it starts at the first boot.
        say "systemd is not running here: edged is enabled and starts at the next boot"
        change systemctl --root="$ROOT" --quiet enable edged.service
    fi
}

uninstall() {
    if systemd_running && systemctl list-unit-files edged.service >/dev/null 2>&1; then
        change systemctl disable --now edged
    elif [ -L "$UNIT_DIR/multi-user.target.wants/edged.service" ]; then
        change systemctl --root="$ROOT" --quiet disable edged.service
    fi
    for path in "$UNIT_DIR/edged.service" "$UNIT_DIR/edged.service.d" "$PREFIX/usr/lib/sysusers.d/edged.conf" \
                "$PREFIX/usr/lib/tmpfiles.d/edged.conf" "$PREFIX/opt/edged" "$PREFIX/usr/local/bin/edged"; do
        if [ -e "$path" ] || [ -L "$path" ]; then change rm -rf "$path"; fi
    done
    if systemd_running; then change systemctl daemon-reload; fi
    if [ "$PURGE" = 1 ]; then
        for path in "$ETC" "$STATE"; do
            if [ -e "$path" ]; then change rm -rf "$path"; fi
        done
        if grep -q '^edged:' "$PREFIX/etc/passwd" 2>/dev/null; then
            change userdel --root "$ROOT" edged
        fi
    elif [ -d "$ETC" ] || [ -d "$STATE" ]; then
        say "kept $ETC and $STATE (remove them with --uninstall --purge)"
    fi
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall
else
    board="$(detect_board)"
    case "$board" in rpi|jetson|generic) ;; *) echo "install.sh: unknown board $board" >&2; exit 2 ;; esac
    choose_python
    say "installing edged for board '$board' into ${ROOT}"
    if [ "$APT" = 1 ]; then install_packages "$board"; fi
    check_python
    install_venv "$board"
    install_system_files "$board"
    install_model
    check_config
    start_service
fi
if [ "$CHANGES" = 0 ]; then echo "nothing to change"; else echo "$CHANGES change(s)$([ "$DRY_RUN" = 1 ] && echo ' would be made')"; fi
