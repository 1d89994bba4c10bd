"""The compiled (mypyc) modules: in use after install, never used once stale."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import vivait_sip
from vivait_sip import native

PROBE = "import vivait_sip.native as n, vivait_sip.sip.message as m, vivait_sip.core as c; print(n.state, m.__file__, c.__file__)"


def probe(pythonpath: Path | None = None, pure: bool = False) -> tuple[list[str], str]:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cwd = pythonpath or Path(vivait_sip.__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=30, check=True, cwd=cwd)
    return out.stdout.split(), out.stderr


def test_the_installed_tree_runs_compiled_unless_told_not_to() -> None:
    # scripts/install.sh builds them (tests/CI included): what the benchmarks measure is
    # what the suite tests.
    if os.environ.get(native.PURE_ENV) == "1":
        assert native.state == "forced-pure"
        return
    state, message_file, core_file = probe()[0]
    assert state == "compiled"
    assert message_file.endswith(".so") and core_file.endswith(".so")
    state, message_file, core_file = probe(pure=True)[0]
    assert state == "forced-pure"
    assert message_file.endswith("message.py") and core_file.endswith("core.py")


def test_an_edited_source_sends_every_compiled_module_back_to_python(tmp_path: Path) -> None:
    package = Path(vivait_sip.__file__).parent
    shutil.copytree(package, tmp_path / "vivait_sip", ignore=shutil.ignore_patterns("__pycache__"))
    copy = tmp_path / "vivait_sip"
    if not (copy / "_native_manifest.json").exists():
        assert native.state in ("pure", "forced-pure")
        return
    state, _, _ = probe(tmp_path)[0]
    assert state == "compiled"
    core = copy / "core.py"
    core.write_text(core.read_text() + "\n# edited after the build\n")
    (state, message_file, core_file), stderr = probe(tmp_path)
    assert state == "stale"
    # All or none: message.py did not change, yet it is imported from source too.
    assert message_file == str(copy / "sip" / "message.py")
    assert core_file == str(core)
    assert "compiled modules do not match their sources" in stderr
