#!/usr/bin/env bash
# The proof on arm64: Debian bookworm for arm64 (Raspberry Pi OS's base), run on this x86
# machine under qemu-user-static, install.sh run inside it from this checkout as a user would,
# then edged inside it: `edged config check`, deploy/platform_check.py (tokens and logits of
# the bundled tiny packages, and `edged run` to READY=1 and a rule event).
#
#   sudo deploy/arm64-proof.sh OUT_DIR        writes OUT_DIR/{install,check}.log, platform.json, times
#
# The bookworm root is built once (debootstrap, about 10 min under emulation) and kept in
# $EDGED_ARM64_CACHE (default /var/cache/edged-arm64), with apt's and pip's downloads. So is a
# copy of it with the Debian packages install.sh installs: under emulation they take about 6
# minutes, a third of a run. That list is install.sh's own (its --dry-run in the root), and
# the copy is made again whenever it changes. Each run works on a throwaway
# overlay of that copy, so the cached roots never change; install.sh then finds its packages
# in place and makes the venv, installs edged and the model, and checks the config. Needs root.
set -euo pipefail

SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${1:?usage: arm64-proof.sh OUT_DIR}" && cd "$1" && pwd)"
CACHE="${EDGED_ARM64_CACHE:-/var/cache/edged-arm64}"
BASE="$CACHE/bookworm-arm64"
MIRROR="${EDGED_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

say() { echo "==> $*"; }
stamp() { echo "$1 $(( $(date +%s) - $2 ))" >> "$OUT/times"; }
: > "$OUT/times"

started=$(date +%s)
missing=()
for package in qemu-user-static binfmt-support debootstrap; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 2>/dev/null || true
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || { echo "arm64-proof.sh: binfmt_misc does not run aarch64 programs through qemu" >&2; exit 1; }
stamp emulation "$started"

started=$(date +%s)
if [ ! -f "$BASE/.complete" ]; then
    say "building Debian bookworm arm64 in $BASE (once; about 10 minutes)"
    mkdir -p "$CACHE"
    # Nothing is ever mounted inside the partial root, so it is safe to remove.
    rm -rf "$BASE.partial"
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv,systemd,ca-certificates \
        bookworm "$BASE.partial" "$MIRROR" > "$OUT/debootstrap.log" 2>&1
    chroot "$BASE.partial" /debootstrap/debootstrap --second-stage >> "$OUT/debootstrap.log" 2>&1
    touch "$BASE.partial/.complete"
    rm -rf "$BASE"
    mv "$BASE.partial" "$BASE"
fi
stamp debootstrap "$started"

# A Raspberry Pi 5's four Cortex-A76 cores. qemu-user shows the chroot this x86 machine's
# /proc/cpuinfo, and onnxruntime's CPU detection crashes on it at import.
CPUINFO="$(mktemp)"
trap 'rm -f "$CPUINFO"' EXIT
for core in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n' "$core"
done > "$CPUINFO"
printf 'Revision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n' >> "$CPUINFO"
mkdir -p "$CACHE/apt-archives/partial" "$CACHE/pip"

# Each step below happens in a private mount namespace: its mounts vanish with it.
#   in_root MODE ROOT: list (install.sh's Debian packages, into OUT/debian-packages) or proof,
#   on an overlay of ROOT; packages: apt installs OUT/debian-packages into ROOT itself.
in_root() {
unshare --mount --propagation private bash -s -- "$1" "$2" "$SOURCE" "$OUT" "$CACHE" "$CPUINFO" <<'INSIDE'
set -euo pipefail
MODE="$1" LOWER="$2" SOURCE="$3" OUT="$4" CACHE="$5" CPUINFO="$6"
stamp() { echo "$1 $(( $(date +%s) - $2 ))" >> "$OUT/times"; }
if [ "$MODE" = packages ]; then
    root="$LOWER"
else
    layers="$CACHE/overlay"
    mkdir -p "$layers"
    mount -t tmpfs tmpfs "$layers"  # upper and work on tmpfs (an overlay cannot sit on overlayfs), gone with the namespace
    mkdir -p "$layers/upper" "$layers/work" "$layers/root"
    mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$layers/upper,workdir=$layers/work" "$layers/root"
    root="$layers/root"
fi
mount -t proc proc "$root/proc"
mount --bind "$CPUINFO" "$root/proc/cpuinfo"
mount --rbind /dev "$root/dev"
mount -t sysfs sys "$root/sys"
mount -t tmpfs tmpfs "$root/tmp"
mkdir -p "$root/run/edged" "$root/out" "$root/root/.cache/pip" "$root/src/edged"
mount --bind "$OUT" "$root/out"
mount --bind "$CACHE/apt-archives" "$root/var/cache/apt/archives"
mount --bind "$CACHE/pip" "$root/root/.cache/pip"
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
if [ "$MODE" != packages ]; then  # the checkout, for install.sh to run from (never into a cached root)
    (cd "$SOURCE" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$root/src/edged")
fi
env=(/usr/bin/env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
     PIP_CERT=/etc/ssl/certs/ca-certificates.crt)

case "$MODE" in
list)
    chroot "$root" "${env[@]}" bash /src/edged/deploy/install.sh --board generic --dry-run > "$OUT/dry-run.log" 2>&1
    sed -n 's/^==> Debian packages: //p' "$OUT/dry-run.log" | tr ' ' '\n' | sort > "$OUT/debian-packages"
    ;;
packages)
    mapfile -t packages < "$OUT/debian-packages"
    chroot "$root" "${env[@]}" apt-get update -qq > "$OUT/packages.log" 2>&1
    chroot "$root" "${env[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${packages[@]}" >> "$OUT/packages.log" 2>&1
    ;;
proof)
    started=$(date +%s)
    chroot "$root" "${env[@]}" bash /src/edged/deploy/install.sh --board generic \
        --model /src/edged/edged/models/tiny/text-int4 > "$OUT/install.log" 2>&1
    stamp install "$started"

    started=$(date +%s)
    chroot "$root" "${env[@]}" edged config check /etc/edged/edged.toml > "$OUT/check.log" 2>&1
    stamp config_check "$started"

    started=$(date +%s)
    chroot "$root" "${env[@]}" /opt/edged/venv/bin/python /src/edged/deploy/platform_check.py --run \
        > "$OUT/platform.json" 2> "$OUT/platform.log"
    stamp platform_check "$started"
    ;;
esac
INSIDE
}

started=$(date +%s)
in_root list "$BASE"
[ -s "$OUT/debian-packages" ] || { echo "arm64-proof.sh: install.sh --dry-run named no Debian packages" \
                                        "($OUT/dry-run.log)" >&2; exit 1; }
PACKAGED="$BASE-$(sha256sum < "$OUT/debian-packages" | cut -c1-12)"
if [ ! -d "$PACKAGED" ]; then  # it only ever appears whole, renamed from .partial
    count=$(wc -l < "$OUT/debian-packages")
    say "installing $count Debian packages into a copy of the root: once for each list, minutes"
    rm -rf "$PACKAGED.partial"
    cp -a "$BASE" "$PACKAGED.partial"
    in_root packages "$PACKAGED.partial"
    for earlier in "$BASE"-*; do  # the copies made for earlier lists
        [ "$earlier" = "$PACKAGED.partial" ] || rm -rf "$earlier"
    done
    mv "$PACKAGED.partial" "$PACKAGED"
fi
stamp packages "$started"

in_root proof "$PACKAGED"
echo "arm64 proof: $(tr '\n' ' ' < "$OUT/times")(seconds)"
