"""Does `scripts/install.sh` need to compile the hot modules (scripts/build_native.py)?

    .venv/bin/python scripts/native_needed.py           # exit 0: up to date; 1: build needed
    .venv/bin/python scripts/native_needed.py --record  # after a build: remember the toolchain

Up to date means: every module of `vivait_sip.native.NATIVE_MODULES` has its compiled
extension, the build manifest (`vivait_sip/_native_manifest.json`) matches the sources
(`native.manifest_for_build()`, which also names the compiler where native.py records
it), and the toolchain that built them — mypy (mypyc), the Python, the C compiler — is the
one installed now, as recorded in `.venv/native-build.json` by `--record` after the last
build.  It prints why a build is needed, or that none is.

native.py is loaded from its file, not imported: importing the package would install its
import guard, and an editable install could bring another tree's copy.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAMP_NAME = "native-build.json"


def load_native(root: Path = ROOT) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_vivait_native_probe", root / "vivait_sip" / "native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def c_compiler() -> str:
    """The first line of `CC --version` for the compiler setuptools will use."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return f"{cc}: not found"
    return out.stdout.splitlines()[0] if out.stdout else f"{cc}: unknown"


def toolchain() -> dict[str, str]:
    try:
        mypy = metadata.version("mypy")
    except metadata.PackageNotFoundError:
        mypy = "not installed"
    return {"mypy": mypy, "python": sys.version.split()[0], "abi": sys.implementation.cache_tag, "cc": c_compiler()}


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def why_build(root: Path, stamp: Path, tools: dict[str, str]) -> str:
    """"" when the compiled modules are up to date, else the reason to build them."""
    native = load_native(root)
    missing = [
        module for module in native.NATIVE_MODULES
        if not any(
            native.source_path(module).with_name(native.source_path(module).stem + suffix).exists()
            for suffix in importlib.machinery.EXTENSION_SUFFIXES
        )
    ]
    if missing:
        return "no compiled modules" if len(missing) == len(native.NATIVE_MODULES) else f"not compiled: {', '.join(missing)}"
    try:
        recorded: Any = json.loads(native.MANIFEST.read_text())
    except (OSError, ValueError):
        return "no build manifest"
    if recorded != native.manifest_for_build():
        return "sources changed since the last build"
    try:
        built: Any = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return "toolchain of the last build unknown"
    if not isinstance(built, dict) or built.get("manifest") != _digest(native.MANIFEST):
        return "toolchain of the last build unknown"
    changed = [f"{key} {built.get(key)} -> {value}" for key, value in tools.items() if built.get(key) != value]
    if changed:
        return "compiler changed: " + "; ".join(changed)
    return ""


def record(root: Path, stamp: Path, tools: dict[str, str]) -> None:
    native = load_native(root)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({**tools, "manifest": _digest(native.MANIFEST)}, indent=1) + "\n")


def main(argv: list[str]) -> int:
    stamp = ROOT / ".venv" / STAMP_NAME
    tools = toolchain()
    if argv == ["--record"]:
        record(ROOT, stamp, tools)
        return 0
    reason = why_build(ROOT, stamp, tools)
    print(reason or f"up to date (mypy {tools['mypy']}, sources unchanged)")
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
