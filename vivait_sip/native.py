"""Compiled hot modules (mypyc), used only while they match their sources.

`scripts/build_native.py` compiles `NATIVE_MODULES` into extension modules next to
their `.py` files, which Python then imports instead of the source, and records each
source's SHA-256 in `_native_manifest.json`.  The server is the same program either
way, about twice as fast per message compiled (bench/RESULTS.md).

A compiled module that no longer matches its source would silently run old code, so
`install_guard()` (called by `vivait_sip/__init__.py` before any submodule is imported)
sends every import of these modules to the `.py` files when any source has changed,
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

# "compiled", "pure" (nothing built), "stale" (sources changed since the build) or "forced-pure"
state = "pure"


def source_path(module: str) -> Path:
    return PACKAGE_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")


def source_digest(module: str) -> str:
    return hashlib.sha256(source_path(module).read_bytes()).hexdigest()


def manifest_for_build() -> dict[str, str]:
    """What the build records: the digest of every compiled source."""
    return {module: source_digest(module) for module in NATIVE_MODULES}


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
    global state
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
        state = "compiled" if recorded == manifest_for_build() else "stale"
    if state != "compiled":
        if state == "stale":
            print(
                "vivait-sip: compiled modules do not match their sources; running the pure-Python "
                "ones (rebuild with: .venv/bin/python scripts/build_native.py)",
                file=sys.stderr,
            )
        sys.meta_path.insert(0, _SourceFirst(set(NATIVE_MODULES)))
