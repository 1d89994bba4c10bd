"""`scripts/install.sh` (issue 13, item 7): one line per step, and a second run with
nothing changed compiles nothing.

The decision (`scripts/native_needed.py`) is tested on a copy of the package; the script
itself runs twice in a copy of the tree whose `.venv/bin/python` passes everything to this
interpreter except pip (logged, not run) and the mypyc build (logged; it writes the
manifest and empty extension files, as a build leaves them), so the run takes seconds.
Measured real runs are in README.md.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def copy_tree(dest: Path) -> Path:
    shutil.copytree(
        ROOT / "vivait_sip", dest / "vivait_sip",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "_native_manifest.json", "prompts"),
    )
    (dest / "scripts").mkdir()
    for name in ("install.sh", "native_needed.py", "make_prompts.py"):
        shutil.copy2(ROOT / "scripts" / name, dest / "scripts" / name)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def fake_build(root: Path, stamp: bool = False) -> None:
    """What scripts/build_native.py leaves: an extension per module and the manifest (and,
    with `stamp`, the toolchain stamp)."""
    native = load(root / "vivait_sip" / "native.py", "native_for_fake_build")
    for module in native.NATIVE_MODULES:
        source = native.source_path(module)
        source.with_name(source.stem + SUFFIX).write_bytes(b"")
    native.MANIFEST.write_text(json.dumps(native.manifest_for_build()))
    if stamp:  # as build_native.py does; without it, a build by an older build_native.py
        needed = load(root / "scripts" / "native_needed.py", "native_needed_for_fake_build")
        needed.record(root, root / ".venv" / needed.STAMP_NAME, needed.toolchain())


def test_the_build_is_needed_only_when_sources_or_compiler_change(tmp_path: Path) -> None:
    root = copy_tree(tmp_path)
    needed = load(root / "scripts" / "native_needed.py", "native_needed_under_test")
    stamp = tmp_path / ".venv" / "native-build.json"
    tools = {"mypy": "1.20.2", "python": "3.11.7", "abi": "cpython-311", "cc": "gcc 12.2.0"}
    assert needed.why_build(root, stamp, tools) == "no compiled modules"
    fake_build(root)
    assert needed.why_build(root, stamp, tools) == "toolchain of the last build unknown"
    needed.record(root, stamp, tools)
    assert needed.why_build(root, stamp, tools) == ""
    assert needed.why_build(root, stamp, {**tools, "mypy": "1.21.0"}) == "compiler changed: mypy 1.20.2 -> 1.21.0"
    assert needed.why_build(root, stamp, {**tools, "cc": "gcc 13.1.0"}) == "compiler changed: cc gcc 12.2.0 -> gcc 13.1.0"
    peer = root / "vivait_sip" / "sip" / "peer.py"
    peer.write_text(peer.read_text() + "\n# edited\n")
    assert needed.why_build(root, stamp, tools) == "sources changed since the last build"
    fake_build(root)  # rebuilt, but the toolchain stamp is of the previous build
    assert needed.why_build(root, stamp, tools) == "toolchain of the last build unknown"
    (root / "vivait_sip" / "sip" / ("peer" + SUFFIX)).unlink()
    assert needed.why_build(root, stamp, tools) == "not compiled: vivait_sip.sip.peer"


STUB_PYTHON = """#!/usr/bin/env bash
# .venv/bin/python of the copy: pip and the mypyc build are logged, not run.
here="$(cd "$(dirname "$0")/../.." && pwd)"
case "$1 $2" in
    "-m pip") echo "pip $*" >> "$here/calls.log"; exit 0 ;;
esac
if [ "$1" = "scripts/build_native.py" ]; then
    echo "build $*" >> "$here/calls.log"
    if [ "${2:-}" != "--clean" ]; then exec "{python}" -c "import sys; sys.path.insert(0, '{tests}'); import test_install; test_install.fake_build(__import__('pathlib').Path('$here'), stamp=True)"; fi
    exit 0
fi
exec "{python}" "$@"
"""

STUB_VIVAIT = """#!/usr/bin/env bash
echo "vivait-sip 0.1.0"
"""


@pytest.mark.timeout(120)
def test_a_second_run_with_nothing_changed_compiles_nothing(tmp_path: Path) -> None:
    root = copy_tree(tmp_path / "tree")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(STUB_PYTHON.replace("{python}", sys.executable).replace("{tests}", str(ROOT / "tests")))
    (bin_dir / "vivait-sip").write_text(STUB_VIVAIT)
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    # apt must never run here: a PATH where apt-get and sudo only say they were called.
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for name in ("apt-get", "sudo", "npm"):
        (fake / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{root}/calls.log"\n')
        (fake / name).chmod(0o755)
    # the webfon's sip.js as an earlier fetch left it: the step is skipped (npm never runs)
    script = (root / "scripts" / "install.sh").read_text()
    pins = dict(line.split("=", 1) for line in script.splitlines() if line.startswith(("SIPJS_VERSION=", "SIPJS_INTEGRITY=")))
    vendor = root / "web" / "vendor" / "sip.js"
    vendor.mkdir(parents=True)
    (vendor / "VENDORED").write_text(f"sip.js {pins['SIPJS_VERSION'].strip(chr(34))} {pins['SIPJS_INTEGRITY'].strip(chr(34))}\n")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "VIVAIT_SIP_PURE": "1"}

    def install() -> list[str]:
        proc = subprocess.run(["bash", "scripts/install.sh"], cwd=root, env=env, capture_output=True, text=True, timeout=100)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stderr == ""
        return proc.stdout.splitlines()

    first = install()
    assert [line.split(":")[0] for line in first] == ["apt", "venv", "pip", "webfon", "compile", "prompts", "installed"]
    assert first[2].startswith("pip: installing vivait-sip [speed,native] and its dependencies ... done (")
    assert first[3].startswith("webfon: sip.js 0.21.2 present, skipped")
    assert first[4].startswith("compile: no compiled modules; compiling with mypyc (about a minute) ... done (")
    second = install()
    assert second[2] == "pip: up to date, skipped (pyproject.toml and extras unchanged)"
    assert second[4].startswith("compile: up to date (mypy ") and second[4].endswith(", skipped")
    assert first[5].startswith("prompts: generating the default prompts (tones, espeak-ng speech) ... done (")
    assert second[5] == "prompts: up to date, skipped"
    assert (root / "vivait_sip" / "media" / "audio" / "prompts" / "moh.wav").is_file()
    calls = (root / "calls.log").read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["pip", "build"], calls  # one pip install, one build, both in run 1
