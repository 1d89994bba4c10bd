"""Compile vivait-sip's hot modules with mypyc, in place (see vivait_sip/native.py).

    .venv/bin/python scripts/build_native.py          # build (needs gcc + Python headers)
    .venv/bin/python scripts/build_native.py --clean  # back to pure Python

Optional, like uvloop: without it the same code runs as plain Python, slower.  The
extension modules land next to their sources (git-ignored) together with
vivait_sip/_native_manifest.json, the SHA-256 of each compiled source and the compiler
(mypy/mypyc version, Python); a module edited after the build, or another mypy, makes the
server fall back to the sources until the next build.  mypy is pinned in pyproject.toml:
mypyc's reference-counting bugs become ours (tests/native_shapes.py).
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# mypyc's reference counting differs with the interpreter's hash seed (where it borrows
# and where it owns): one seed makes one build per source, the one the leak test checked.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])
os.environ["VIVAIT_SIP_PURE"] = "1"  # importing the package must not load what we rebuild
sys.path.insert(0, str(ROOT))

from vivait_sip.native import MANIFEST, NATIVE_MODULES, manifest_for_build, source_path  # noqa: E402


def clean() -> None:
    for module in NATIVE_MODULES:
        src = source_path(module)
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            src.with_name(src.stem + suffix).unlink(missing_ok=True)
    for shared in (ROOT / "vivait_sip").glob("_native_group*.so"):
        shared.unlink()
    MANIFEST.unlink(missing_ok=True)
    shutil.rmtree(ROOT / "build" / "native", ignore_errors=True)


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    clean()
    os.chdir(ROOT)
    paths = [str(source_path(m).relative_to(ROOT)) for m in NATIVE_MODULES]
    setup(
        name="vivait-sip-native",
        ext_modules=mypycify(paths, opt_level="3", group_name="vivait_sip._native_group"),
        script_args=["build_ext", "--inplace", "--build-temp", "build/native", "-q"],
    )
    manifest = manifest_for_build()
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"compiled {len(NATIVE_MODULES)} modules with mypyc {manifest['compiler']['mypy']}")  # type: ignore[index]
    # The toolchain stamp install.sh checks (scripts/native_needed.py): a build by hand is
    # then not compiled again by the next install.
    subprocess.run([sys.executable, str(ROOT / "scripts" / "native_needed.py"), "--record"], check=True)


if __name__ == "__main__":
    clean() if sys.argv[1:] == ["--clean"] else build()
