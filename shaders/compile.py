"""Compile shaders/*.glsl to SPIR-V shipped in hyperopt/spirv/ (development time only).

    python shaders/compile.py          # compile what changed (needs glslc or glslangValidator)
    python shaders/compile.py --check  # exit 1 if a shipped .spv is stale (no compiler needed)

Each shader's source hash (its own text plus common.glsl) is recorded in hyperopt/spirv/manifest.json;
a stale manifest entry means the GLSL changed after the SPIR-V was built.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

SHADERS = Path(__file__).resolve().parent
OUT = SHADERS.parent / "hyperopt" / "spirv"
MANIFEST = OUT / "manifest.json"
COMMON = "common.glsl"


def sources() -> list[Path]:
    return sorted(p for p in SHADERS.glob("*.glsl") if p.name != COMMON)


def source_hash(path: Path) -> str:
    h = hashlib.sha256(path.read_bytes())
    h.update((SHADERS / COMMON).read_bytes())
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
