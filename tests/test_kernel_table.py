"""Every kernel's GLSL twin agrees with its declaration, and the shipped SPIR-V is current."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hyperopt.kernels import CONTROL, KERNELS

ROOT = Path(__file__).resolve().parent.parent
BINDING = re.compile(r"layout\s*\(\s*set\s*=\s*0\s*,\s*binding\s*=\s*(\d+)[^)]*\)\s*(?:readonly\s+|writeonly\s+)?"
                     r"buffer\s+\w+\s*\{\s*\w+\s+(\w+)\s*\[\s*\]\s*;\s*\}")
STRUCT = re.compile(r"struct\s+Scalars\s*\{(.*?)\}\s*;", re.S)


def glsl(kernel):
    return (ROOT / "shaders" / f"{kernel.shader}.glsl").read_text()


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_glsl_matches_declaration(name):
    kernel = KERNELS[name]
    source = re.sub(r"//[^\n]*", "", glsl(kernel))
    struct = STRUCT.search(source)
    assert struct, f"{kernel.shader}.glsl declares no struct Scalars"
    fields = re.findall(r"(?:float|real)\s+(\w+)\s*;", struct.group(1))
    assert tuple(fields) == (kernel.scalars or ("unused",)), f"{kernel.shader}.glsl Scalars fields differ from the declaration"
    arenas = sorted((int(b), n) for b, n in BINDING.findall(source) if int(b) >= 4)
    expected = [] if kernel.kind == CONTROL else list(enumerate(kernel.buffers, start=4))
    assert arenas == expected, f"{kernel.shader}.glsl arena bindings differ from the declaration"
    for variant in ("", ".f64"):       # float32 and float64 builds of the one source
        assert (ROOT / "hyperopt" / "spirv" / f"{kernel.shader}{variant}.spv").exists()


def test_every_shader_has_a_declaration():
    declared = {k.shader for k in KERNELS.values()} | {"segment-sum", "copy-bandwidth"}   # copy-bandwidth: gpu_check's probe
    shipped = {p.stem for p in (ROOT / "shaders").glob("*.glsl")}
    assert shipped == declared


def test_shipped_spirv_is_not_stale():
    result = subprocess.run([sys.executable, str(ROOT / "shaders" / "compile.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
