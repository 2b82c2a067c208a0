"""Compile shaders/*.glsl to SPIR-V shipped in hyperopt/spirv/ (development time only).

    python shaders/compile.py          # compile what changed (needs glslc or glslangValidator)
    python shaders/compile.py --check  # exit 1 if a shipped .spv is stale (no compiler needed)

``*.glsl`` files are kernels (each compiled to one .spv); ``*.glsli`` files are libraries they
#include.  Each kernel's source hash (its text plus every library it includes) is recorded in
hyperopt/spirv/manifest.json; a stale entry means the GLSL changed after the SPIR-V was built.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

SHADERS = Path(__file__).resolve().parent
OUT = SHADERS.parent / "hyperopt" / "spirv"
MANIFEST = OUT / "manifest.json"
INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"', re.M)


def sources() -> list[Path]:
    return sorted(SHADERS.glob("*.glsl"))


def source_hash(path: Path) -> str:
    h, seen, todo = hashlib.sha256(), set(), [path]
    while todo:
        p = todo.pop(0)
        if p.name in seen:
            continue
        seen.add(p.name)
        text = p.read_bytes()
        h.update(text)
        todo += [SHADERS / name for name in INCLUDE.findall(text.decode())]
    return h.hexdigest()


def stale() -> list[str]:
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    out = []
    for src in sources():
        spv = OUT / (src.stem + ".spv")
        if not spv.exists() or manifest.get(src.stem) != source_hash(src):
            out.append(src.name)
    return out


def compile_one(src: Path, dst: Path) -> None:
    if shutil.which("glslc"):
        cmd = ["glslc", "-fshader-stage=compute", "--target-env=vulkan1.1", "-O", str(src), "-o", str(dst)]
    elif shutil.which("glslangValidator"):
        cmd = ["glslangValidator", "-S", "comp", "--target-env", "vulkan1.1", "-o", str(dst), str(src)]
    else:
        sys.exit("no shader compiler found: install glslc (Debian: glslc) or glslangValidator (glslang-tools)")
    subprocess.run(cmd, check=True)


def main(argv) -> int:
    if "--check" in argv:
        bad = stale()
        for name in bad:
            print(f"stale SPIR-V for {name}: run python shaders/compile.py")
        return 1 if bad else 0
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    for src in sources():
        if src.stem in manifest and manifest[src.stem] == source_hash(src) and (OUT / (src.stem + ".spv")).exists():
            continue
        compile_one(src, OUT / (src.stem + ".spv"))
        manifest[src.stem] = source_hash(src)
        print(f"compiled {src.name}")
    for stem in list(manifest):
        if not (SHADERS / f"{stem}.glsl").exists():
            del manifest[stem]
            (OUT / f"{stem}.spv").unlink(missing_ok=True)
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
