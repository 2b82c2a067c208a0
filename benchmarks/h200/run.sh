#!/usr/bin/env bash
# The one command to run on the GPU machine, from the repository root, after prepare.sh ran here:
#   run(command="bash benchmarks/h200/run.sh", carry=["benchmarks/h200/carry"], timeout_s=560)
# Unpacks the carried Vulkan loader (into /, only where no loader is installed) and validation
# layer (into /tmp), installs the carried wheels into /tmp (only where `import vulkan` fails), points
# the loader at the NVIDIA ICD if none is registered, then runs benchmarks.gpu_check with a timeout.
# Writes to $OUT: gpu_check.md, .csv, .png, .log, parts.tar.gz (raw records) and run.log
# (the tool returns at most 8 files).  Environment: GPU_CHECK_TIME_LIMIT (seconds, default 460),
# GPU_CHECK_ARGS (extra arguments, e.g. --quick), DEVICE (default gpu), PYTHON (default python3),
# CARRY (default benchmarks/h200/carry).
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
CARRY=${CARRY:-benchmarks/h200/carry}
PYTHON=${PYTHON:-python3}
LIMIT=${GPU_CHECK_TIME_LIMIT:-460}
WORK=$(mktemp -d /tmp/hyperopt-gpu-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

setup() {
    if ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' > /dev/null; then   # no -q: an early exit would SIGPIPE ldconfig, and pipefail would read that as absent
        echo "Vulkan loader: already installed"
    else
        echo "Vulkan loader: unpacking the carried .debs into /"
        for f in "$CARRY"/debs/*.deb; do
            case "$f" in *vulkan-validationlayers*) continue ;; esac
            dpkg -x "$f" / || return 1
        done
        ldconfig
    fi
    layer=$(ls "$CARRY"/debs/vulkan-validationlayers_*.deb 2>/dev/null | head -1)
    if [ -n "$layer" ]; then
        dpkg -x "$layer" "$WORK/vvl" || return 1
        lib=$(find "$WORK/vvl" -name 'libVkLayer_khronos_validation.so' | head -1)
        json=$(find "$WORK/vvl" -name 'VkLayer_khronos_validation.json' | head -1)
        # the manifest names the library by file name only: make it absolute
        sed -i "s|\"library_path\": *\"[^\"]*\"|\"library_path\": \"$lib\"|" "$json"
        export VK_LAYER_PATH=$(dirname "$json")
        echo "validation layer: $json"
    else
        echo "validation layer: not carried"
    fi
    if "$PYTHON" -c 'import vulkan' 2>/dev/null; then
        echo "vulkan binding: already importable"
    else
        echo "vulkan binding: installing the carried wheels into $WORK/site"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$WORK/site" "$CARRY"/wheels/*.whl || return 1
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    registered=$(ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null | grep -ci nvidia)
    nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [ "$registered" = 0 ] && [ -f "$nvidia_icd" ]; then
        export VK_DRIVER_FILES=$nvidia_icd VK_ICD_FILENAMES=$nvidia_icd
        export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
        echo "Vulkan ICD: $nvidia_icd"
    fi
    return 0
}

{
    date -u
    command -v nvidia-smi >/dev/null && nvidia-smi -L
    "$PYTHON" --version
    if setup; then
        export PYTHONUNBUFFERED=1
        # the check keeps its own time; the outer timeout is the last resort
        timeout --kill-after=15 $((${LIMIT%.*} + 45)) "$PYTHON" -m benchmarks.gpu_check --out "$WORK/out" \
            --device "${DEVICE:-gpu}" --time-limit "$LIMIT" ${GPU_CHECK_ARGS:-}
        rc=$?
    else
        echo "setup failed: gpu_check not run"
        rc=3
    fi
    for f in gpu_check.md gpu_check.csv gpu_check.png gpu_check.log; do
        [ -f "$WORK/out/$f" ] && cp "$WORK/out/$f" "$OUT/"
    done
    [ -d "$WORK/out/parts" ] && tar -czf "$OUT/parts.tar.gz" -C "$WORK/out" parts
    echo "run.sh: gpu_check exit status $rc"
    exit $rc
} 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
