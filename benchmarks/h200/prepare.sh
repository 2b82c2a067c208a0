#!/usr/bin/env bash
# Run on a machine with network (the CPU machine), once, before a GPU run: downloads into
# benchmarks/h200/carry/ (ignored by git) what the GPU machine lacks, for run.sh to unpack there:
#   debs/    the Vulkan loader and the GL/EGL libraries the NVIDIA driver's Vulkan ICD needs
#            (Debian amd64 .debs, unpacked into / there), and the Khronos validation layer
#            (unpacked into /tmp there, found through VK_LAYER_PATH)
#   wheels/  the `vulkan` binding and `cffi` (with `pycparser`) for CPython 3.12 on x86-64
# Then carry that folder with the call: carry=["benchmarks/h200/carry"] (it counts towards 64 MiB).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
rm -rf carry
mkdir -p carry/debs carry/wheels
lists=$(mktemp -d /tmp/hyperopt-apt-amd64.XXXXXX)
mkdir -p "$lists/partial" "$lists/cache/archives/partial"
apt=(-oAPT::Sandbox::User=root -oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$lists" -oDir::Cache="$lists/cache" -qq)
apt-get "${apt[@]}" update
(cd carry/debs && apt-get "${apt[@]}" download \
    libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 vulkan-validationlayers)
rm -rf "$lists"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d carry/wheels \
    vulkan==1.3.275.1 cffi==2.1.1 pycparser==3.12
ls -l carry/debs carry/wheels
du -sh carry
