"""The compiled (mypyc) modules: in use after install, never used once stale, free of the
code shapes that mypyc compiles into reference leaks (tests/native_shapes.py).

Runs in both modes: compiled (what install.sh builds, CI's first pass) and with
VIVAIT_SIP_PURE=1 (CI's second pass), asserting what each mode must look like.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from native_shapes import syntax_violations, typed_violations, violations

import vivait_sip
from vivait_sip import native

PROBE = "import vivait_sip.native as n, vivait_sip.sip.message as m, vivait_sip.core as c; print(n.state, m.__file__, c.__file__)"
FORCED_PURE = os.environ.get(native.PURE_ENV) == "1"
BUILT = (Path(vivait_sip.__file__).parent / "_native_manifest.json").exists()


def probe(pythonpath: Path | None = None, pure: bool = False) -> tuple[list[str], str]:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cwd = pythonpath or Path(vivait_sip.__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=30, check=True, cwd=cwd)
    return out.stdout.split(), out.stderr


def test_this_process_runs_the_mode_it_was_asked_for() -> None:
    if FORCED_PURE:
        # CI's pure pass: every listed module comes from its source, whatever is built.
        assert native.state in ("forced-pure", "pure")
        for module in native.NATIVE_MODULES:
            loaded = sys.modules.get(module)
            if loaded is not None:
                assert str(loaded.__file__).endswith(".py"), loaded.__file__
        return
    # scripts/install.sh builds them (tests/CI included): what the benchmarks measure is
    # what the suite tests.
    assert native.state == "compiled", native.stale_reason or "nothing built: run scripts/install.sh"
    import vivait_sip.core as core
    import vivait_sip.sip.message as message

    assert str(message.__file__).endswith(".so") and str(core.__file__).endswith(".so")


@pytest.mark.skipif(not BUILT, reason="needs the compiled modules (scripts/install.sh)")
def test_the_installed_tree_runs_compiled_unless_told_not_to() -> None:
    # Subprocesses choose their own mode, whatever this process runs.
    state, message_file, core_file = probe()[0]
    assert state == "compiled"
    assert message_file.endswith(".so") and core_file.endswith(".so")
    state, message_file, core_file = probe(pure=True)[0]
    assert state == "forced-pure"
    assert message_file.endswith("message.py") and core_file.endswith("core.py")


def _copy_tree(tmp_path: Path) -> Path:
    package = Path(vivait_sip.__file__).parent
    shutil.copytree(package, tmp_path / "vivait_sip", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "vivait_sip"


@pytest.mark.skipif(not BUILT, reason="needs the compiled modules (scripts/install.sh)")
def test_an_edited_source_sends_every_compiled_module_back_to_python(tmp_path: Path) -> None:
    copy = _copy_tree(tmp_path)
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
    assert "vivait_sip.core" in stderr


@pytest.mark.skipif(not BUILT, reason="needs the compiled modules (scripts/install.sh)")
def test_another_compiler_makes_the_build_stale(tmp_path: Path) -> None:
    copy = _copy_tree(tmp_path)
    manifest_path = copy / "_native_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # The build records the compiler that made it (mypy is mypyc) and the Python.
    assert manifest["compiler"]["mypy"] == native.compiler_version()
    assert manifest["compiler"]["abi"] == sys.implementation.cache_tag
    assert manifest["compiler"]["python"]
    manifest["compiler"]["mypy"] = "0.0.1"
    manifest_path.write_text(json.dumps(manifest))
    (state, message_file, _), stderr = probe(tmp_path)
    assert state == "stale"
    assert message_file == str(copy / "sip" / "message.py")
    assert "built by mypy 0.0.1" in stderr


def test_staleness_reasons() -> None:
    current = native.manifest_for_build()
    assert native.why_stale(current) == ""
    assert native.why_stale({m: "x" for m in native.NATIVE_MODULES}) != ""  # the old format
    other = json.loads(json.dumps(current))
    other["compiler"]["abi"] = "cpython-299"
    assert "cpython-299" in native.why_stale(other)
    edited = json.loads(json.dumps(current))
    edited["modules"]["vivait_sip.sip.uri"] = "0" * 64
    assert native.why_stale(edited) == "sources changed: vivait_sip.sip.uri"


# ---- the leak shapes (tests/native_shapes.py) -------------------------------------------

PLANTED = '''
class Cache:
    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.items: list[int] = []
        self.last: object = None

    def reset(self) -> None:
        self.values.clear()                       # attr-clear
        self.items.clear()                        # attr-clear

    def fill(self, key: str, value: object) -> object:
        cached = self.values[key] = value         # chained-assign (subscript)
        first = self.last = value                 # chained-assign (attribute)
        a = b = value                             # allowed: plain names
        local: dict[str, int] = {}
        local.clear()                             # allowed: not an attribute
        return (cached, first, a, b)


def serialise(head: str, body: bytes) -> bytes:
    return head.encode() + body                   # bytes-concat


def stateless(req: object) -> object:
    return (lambda r: r.to.tag is None)(req)      # lambda-chain


def joined(head: bytes, body: bytes) -> bytes:
    text = "a" + "b"                              # allowed: str
    return b"".join((head, body)) if text else head
'''


def test_the_checker_catches_each_planted_shape(tmp_path: Path) -> None:
    lines = PLANTED.splitlines()

    def line_of(marker: str) -> list[int]:
        return [n for n, text in enumerate(lines, 1) if marker in text and "allowed" not in text]

    syntax = syntax_violations(PLANTED, "planted.py")
    assert sorted((v.rule, v.line) for v in syntax) == sorted(
        [("attr-clear", n) for n in line_of("# attr-clear")]
        + [("chained-assign", n) for n in line_of("# chained-assign")]
        + [("lambda-chain", n) for n in line_of("# lambda-chain")]
    )
    assert len(syntax) == 5
    path = tmp_path / "planted_module.py"
    path.write_text(PLANTED)
    typed = typed_violations({"planted_module": (str(path), PLANTED)})
    assert [(v.rule, v.line) for v in typed] == [("bytes-concat", n) for n in line_of("# bytes-concat")]


def test_no_compiled_module_contains_a_leak_shape() -> None:
    found = violations()
    assert found == [], "leak shapes in compiled modules (see tests/native_shapes.py):\n" + "\n".join(map(str, found))
