#!/usr/bin/env bash
# Installs llama.cpp, the peer `edged bench engine --against llama.cpp` measures edged beside:
# llama-cpp-python built from its sdist into the venv, and the GGUF converter of the same
# llama.cpp commit (with its gguf module) under VENV/share/edged/llama.cpp. A benchmark tool,
# not a part of the daemon. Takes about 20 minutes on 2 cores (the C++ build).
#
#   bash deploy/llama-peer.sh                     into .venv
#   bash deploy/llama-peer.sh --venv .venv-3.13
#
# The build targets the CPU it runs on, without -march=native: llama.cpp's native build on
# these machines turns on AMX or AVX-512 paths that die with SIGILL on a VM whose host has
# them but whose guest does not (../shared/FACTS.md), or with SIGSEGV in the first prompt
# where the guest does grant AMX (an Intel Xeon VM, docs/engine.md). The extensions that
# /proc/cpuinfo lists are turned on one by one; AMX stays off.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
VERSION=0.3.36
while [ $# -gt 0 ]; do
    case "$1" in
        --venv) VENV="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "llama-peer.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -x "$VENV/bin/python" ] || { echo "llama-peer.sh: no venv at $VENV: run deploy/dev-setup.sh first" >&2; exit 1; }
command -v cmake >/dev/null && command -v g++ >/dev/null || {
    echo "llama-peer.sh: needs cmake and g++ (apt-get install cmake g++)" >&2; exit 1; }

flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { case "$flags" in *" $1 "*) echo ON ;; *) echo OFF ;; esac; }
cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma)"
cmake_args="$cmake_args -DGGML_F16C=$(has f16c) -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VNNI=$(has avx512_vnni)"
cmake_args="$cmake_args -DGGML_AVX_VNNI=$(has avx_vnni) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
cmake_args="$cmake_args -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
echo "==> llama-cpp-python $VERSION from its sdist, cmake $cmake_args"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$VENV/bin/pip" download --quiet --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$VERSION"
tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
source="$work/llama_cpp_python-$VERSION"
CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/pip" install --quiet "$source"

converter="$VENV/share/edged/llama.cpp"
echo "==> llama.cpp's converter into $converter"
rm -rf "$converter"
mkdir -p "$converter"
cp "$source/vendor/llama.cpp/convert_hf_to_gguf.py" "$converter/"
cp -r "$source/vendor/llama.cpp/conversion" "$source/vendor/llama.cpp/gguf-py" "$converter/"
"$VENV/bin/python" -c "import llama_cpp; print('==> ready: llama_cpp', llama_cpp.__version__)"
