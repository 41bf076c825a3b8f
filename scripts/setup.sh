#!/usr/bin/env bash
# Installs what building and testing resnetc needs on a fresh Debian machine:
# LLVM 19 (linked statically through inkwell) and the Rust components used by
# CI. Idempotent: a second run only checks.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

if [ ! -x /usr/lib/llvm-19/bin/llvm-config ] || [ ! -f /usr/lib/llvm-19/lib/libPolly.a ]; then
    echo "setup: installing LLVM 19" >&2
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq llvm-19-dev libpolly-19-dev libzstd-dev >/dev/null
fi
/usr/lib/llvm-19/bin/llvm-config --version | grep -q '^19\.' || { echo "setup: LLVM 19 not found" >&2; exit 1; }

# A C toolchain: build.rs compiles the thread pool of generated code
# (runtime/parallel.c), and the tests link a C program with gcc and make.
if ! command -v gcc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1 || ! command -v nm >/dev/null 2>&1; then
    echo "setup: installing gcc, make, binutils" >&2
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc make binutils >/dev/null
fi

# qemu-user: the tests run portable libraries on emulated CPUs without
# AVX-512 (`qemu-x86_64 -cpu Nehalem`, `-cpu Haswell`), and AArch64
# libraries without ARM hardware (tests/aarch64.rs): a cross gcc and C
# library link the C demo, qemu-aarch64 runs it.
if ! command -v qemu-x86_64 >/dev/null 2>&1 || ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 \
    || ! command -v qemu-aarch64 >/dev/null 2>&1 || [ ! -f /usr/aarch64-linux-gnu/lib/libc.a ]; then
    echo "setup: installing qemu-user, gcc-aarch64-linux-gnu, libc6-dev-arm64-cross" >&2
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi


# onnxruntime for the ONNX export test and the side-by-side benchmark, in a
# project-local virtual environment.
cd "$(dirname "$0")/.."
if ! .tools/py/bin/python -c "import onnxruntime, numpy" >/dev/null 2>&1; then
    echo "setup: installing onnxruntime into .tools/py" >&2
    python3 -m venv .tools/py
    .tools/py/bin/pip install -q --disable-pip-version-check onnxruntime numpy
fi
# NVIDIA's PTX assembler (no GPU or CUDA toolkit needed): the tests assemble
# every example's PTX with it. It ships in a PyPI wheel.
if ! ls .tools/py/lib/python*/site-packages/nvidia/cuda_nvcc/bin/ptxas >/dev/null 2>&1; then
    echo "setup: installing ptxas (nvidia-cuda-nvcc-cu12) into .tools/py" >&2
    .tools/py/bin/pip install -q --disable-pip-version-check nvidia-cuda-nvcc-cu12
fi
# Its disassembler, for scripts/sass_loops.py and the K-loop test (the
# FFMA share of every GEMM kernel's inner loop, read off the machine code).
if ! ls .tools/py/lib/python*/site-packages/nvidia/*/bin/nvdisasm >/dev/null 2>&1; then
    echo "setup: installing nvdisasm (nvidia-cuda-nvdisasm) into .tools/py" >&2
    .tools/py/bin/pip install -q --disable-pip-version-check nvidia-cuda-nvdisasm
fi
echo "setup: ok (LLVM $(/usr/lib/llvm-19/bin/llvm-config --version), $(.tools/py/bin/python -c "import onnxruntime; print(\"onnxruntime \" + onnxruntime.__version__)"))" >&2
