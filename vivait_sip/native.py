"""Compiled hot modules (mypyc), used only while they match their sources.

`scripts/build_native.py` compiles `NATIVE_MODULES` into extension modules next to
their `.py` files, which Python then imports instead of the source, and records each
source's SHA-256 in `_native_manifest.json`.  The server is the same program either
way, about twice as fast per message compiled (bench/RESULTS.md).

A compiled module that no longer matches its source would silently run old code, so
`install_guard()` (called by `vivait_sip/__init__.py` before any submodule is imported)
sends every import of these modules to the `.py` files when any source has changed,
when the compiler changed (the manifest records the mypy/mypyc version and the Python
that built them; mypyc's own bugs are part of the code we run, tests/native_shapes.py),
when the manifest is missing, or when VIVAIT_SIP_PURE=1 is set.  It is all or none:
compiled modules call each other's native classes directly.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

NATIVE_MODULES = (
    "vivait_sip.sip.uri",
    "vivait_sip.sip.message",
    "vivait_sip.sip.transaction",
    "vivait_sip.core",
    "vivait_sip.registrar.digest",
    "vivait_sip.registrar.location",
    "vivait_sip.registrar.register",
    "vivait_sip.registrar.security",
    "vivait_sip.registrar.users",
    "vivait_sip.sip.peer",
)
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "_native_manifest.json"
PURE_ENV = "VIVAIT_SIP_PURE"

# "compiled", "pure" (nothing built), "stale" (sources or compiler changed since the build)
# or "forced-pure"
state = "pure"
# Why the build is stale ("" otherwise), for the warning and `ctl status`.
stale_reason = ""


def source_path(module: str) -> Path:
    return PACKAGE_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")


def source_digest(module: str) -> str:
    return hashlib.sha256(source_path(module).read_bytes()).hexdigest()


def compiler_version() -> str | None:
    """The installed mypy (which is mypyc), None when it is not installed.

    Read from its dist-info directory name: every `import vivait_sip` asks, and
    importlib.metadata costs ~40 ms where this costs ~1.
    """
    spec = importlib.util.find_spec("mypy")
    if spec is None or spec.origin is None:
        return None
    site = Path(spec.origin).parent.parent
    found = sorted(site.glob("mypy-*.dist-info"))
    if len(found) == 1:
        return found[0].name[len("mypy-") : -len(".dist-info")]
    from importlib import metadata  # slow to import: only when the name did not tell

    try:
        return metadata.version("mypy")
    except metadata.PackageNotFoundError:
        return None


def compiler_info() -> dict[str, str | None]:
    """What built (or would build) the extensions: mypyc's version and the Python."""
    return {
        "mypy": compiler_version(),
        "python": platform.python_version(),
        "abi": sys.implementation.cache_tag,
    }


def manifest_for_build() -> dict[str, object]:
    """What the build records: the compiler and the digest of every compiled source."""
    return {
        "compiler": compiler_info(),
        "modules": {module: source_digest(module) for module in NATIVE_MODULES},
    }


def why_stale(recorded: object) -> str:
    """"" when the recorded build matches the sources and the compiler, else the reason.

    A compiler that is no longer installed is no change (nothing could rebuild them);
    a Python patch release is none either (same ABI: the extension suffix enforces it).
    """
    if not isinstance(recorded, dict) or not isinstance(recorded.get("modules"), dict):
        return "no manifest of the current format"
    compiler = recorded.get("compiler")
    if not isinstance(compiler, dict):
        return "no compiler recorded"
    now = compiler_info()
    if now["mypy"] is not None and compiler.get("mypy") != now["mypy"]:
        return f"built by mypy {compiler.get('mypy')}, mypy {now['mypy']} installed"
    if compiler.get("abi") != now["abi"]:
        return f"built for {compiler.get('abi')}, running {now['abi']}"
    modules = recorded["modules"]
    changed = [m for m in NATIVE_MODULES if modules.get(m) != source_digest(m)]
    if changed or set(modules) != set(NATIVE_MODULES):
        return "sources changed: " + ", ".join(changed or sorted(set(modules) ^ set(NATIVE_MODULES)))
    return ""


def _compiled_present() -> bool:
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return any(
        source_path(m).with_name(source_path(m).stem + suffix).exists() for m in NATIVE_MODULES for suffix in suffixes
    )


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Imports the listed modules from their `.py` files, never from an extension."""

    def __init__(self, modules: set[str]) -> None:
        self.modules = modules

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def install_guard() -> None:
    global state, stale_reason
    if not _compiled_present():
        state = "pure"
        return
    if os.environ.get(PURE_ENV) == "1":
        state = "forced-pure"
    else:
        try:
            recorded = json.loads(MANIFEST.read_text())
        except (OSError, ValueError):
            recorded = {}
        stale_reason = why_stale(recorded)
        state = "stale" if stale_reason else "compiled"
    if state != "compiled":
        if state == "stale":
            print(
                f"vivait-sip: compiled modules do not match their sources ({stale_reason}); running "
                "the pure-Python ones (rebuild with: .venv/bin/python scripts/build_native.py)",
                file=sys.stderr,
            )
        sys.meta_path.insert(0, _SourceFirst(set(NATIVE_MODULES)))
