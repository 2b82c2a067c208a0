"""Compile shaders/*.glsl to SPIR-V shipped in hyperopt/spirv/ (development time only).

    python shaders/compile.py          # compile what changed (needs glslc or glslangValidator)
    python shaders/compile.py --check  # exit 1 if a shipped .spv is stale (no compiler needed)

``*.glsl`` files are kernels; ``*.glsli`` files are libraries they #include.  Each kernel is compiled
once per precision (common.glsli's ``real`` type): ``<name>.spv`` (float32) and ``<name>.f64.spv``
(float64, ``-DHYPEROPT_FLOAT64``).  Each build's source hash (the kernel's text, every library it
includes and the precision) is recorded in hyperopt/spirv/manifest.json; a stale entry means the
GLSL changed after the SPIR-V was built.
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


# (suffix of the .spv and manifest key, compiler definitions) per precision
VARIANTS = (("", ()), (".f64", ("HYPEROPT_FLOAT64",)))


def source_hash(path: Path, defines=()) -> str:
    h, seen, todo = hashlib.sha256(), set(), [path]
    for d in defines:
        h.update(f"-D{d}\n".encode())
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
        for suffix, defines in VARIANTS:
            spv = OUT / (src.stem + suffix + ".spv")
            if not spv.exists() or manifest.get(src.stem + suffix) != source_hash(src, defines):
                out.append(src.name + (f" ({suffix[1:]})" if suffix else ""))
    return out


def compile_one(src: Path, dst: Path, defines=()) -> None:
    if shutil.which("glslc"):
        cmd = ["glslc", "-fshader-stage=compute", "--target-env=vulkan1.1", "-O", *[f"-D{d}" for d in defines],
               str(src), "-o", str(dst)]
    elif shutil.which("glslangValidator"):
        cmd = ["glslangValidator", "-S", "comp", "--target-env", "vulkan1.1", *[f"-D{d}" for d in defines],
               "-o", str(dst), str(src)]
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
        for suffix, defines in VARIANTS:
            key, spv = src.stem + suffix, OUT / (src.stem + suffix + ".spv")
            if manifest.get(key) == source_hash(src, defines) and spv.exists():
                continue
            compile_one(src, spv, defines)
            manifest[key] = source_hash(src, defines)
            print(f"compiled {spv.name}")
    known = {src.stem + suffix for src in sources() for suffix, _ in VARIANTS}
    for key in list(manifest):
        if key not in known:
            del manifest[key]
            (OUT / f"{key}.spv").unlink(missing_ok=True)
    MANIFEST.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
