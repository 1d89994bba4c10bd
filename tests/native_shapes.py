"""Code shapes that compiled modules (vivait_sip.native.NATIVE_MODULES) must not contain.

mypyc turns each compiled module into C with its own reference counting, and a wrong
reference count in a primitive leaks every object that passes through it (nothing
crashes; memory only grows, and a leaked object can keep whole message graphs alive).
The shapes below are the ones that leaked, or were believed to, in this code base:

* ``bytes-concat``: ``a + b`` where ``a`` is ``bytes``.  mypyc <= 2.0 declares its
  ``CPyBytes_Concat`` primitive as stealing the left operand while the C function does
  not, so every left operand is leaked (mypyc/mypyc#1192, fixed by python/mypy#21469,
  first released in mypy 2.x).  Found under an INVITE flood: the 407 and the 100 Trying
  serialised by ``Message._serialise`` (``head.encode() + body``) and every nonce
  (``payload + mac``) stayed alive, ~500 bytes per request.  Use ``b"".join((a, b))``.
  Needs types, so it is checked on mypy's typed tree (`typed_violations`).
* ``property-borrow``: a property of a compiled class defined in *another* compiled
  module, read where mypyc borrows the value instead of owning it: ``x.prop.attr``
  (attribute access on the result; a method call is fine), ``x.prop is None``,
  ``isinstance(x.prop, T)``, ``len(x.prop)``, ``x.prop[i]``.  mypyc <= 2.0 can mistake
  the property for a struct field and skip the decref of the getter's result
  (python/mypy#21230; seen in core.SipCore._options: one SipUri per OPTIONS, found by
  tests/registrar/test_no_leaks.py).  Read it into a local first: ``uri = req.uri``.
  Needs types too.
* ``attr-clear``: ``x.attr.clear()``.  Believed to leak the cleared values of a
  non-native class's dict (tests/registrar/test_no_leaks.py history); not reproduced
  with mypy 1.20.2 in isolation, but replacing the container (``x.attr = {}``) costs
  nothing and keeps the rule simple.
* ``chained-assign``: ``a = x.attr = v`` or ``a = d[k] = v`` (any chained assignment
  with an attribute or subscript target).  Same history as ``attr-clear``.
* ``lambda-chain``: ``lambda req, peer: req.to.tag is None`` — an attribute of an
  attribute inside a lambda.  mypy's typed tree does not give the lambda's parameters
  their types, so `property-borrow` cannot see this shape there, and mypyc compiled it
  with or without the decref depending on the build's hash seed (python -X
  PYTHONHASHSEED): the leak test found one To NameAddr per OPTIONS in some builds only.
  Use a method with locals.

`python tests/native_shapes.py` lists the violations in the compiled modules;
tests/server/test_native.py asserts there are none and that each rule catches a
planted example.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, order=True)
class Violation:
    path: str
    line: int
    rule: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.text}"


def _is_attr_or_subscript(target: ast.expr) -> bool:
    if isinstance(target, (ast.Attribute, ast.Subscript)):
        return True
    if isinstance(target, (ast.Tuple, ast.List)):
        return any(_is_attr_or_subscript(t) for t in target.elts)
    if isinstance(target, ast.Starred):
        return _is_attr_or_subscript(target.value)
    return False


def syntax_violations(source: str, path: str = "<string>") -> list[Violation]:
    """`attr-clear`, `chained-assign` and `lambda-chain` in one module's source."""
    tree = ast.parse(source, path)
    lines = source.splitlines()
    found: list[Violation] = []

    def add(node: ast.AST, rule: str) -> None:
        line = getattr(node, "lineno", 0)
        found.append(Violation(path, line, rule, lines[line - 1].strip() if 0 < line <= len(lines) else ""))

    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "clear"
            and not node.args
            and not node.keywords
            and isinstance(node.func.value, ast.Attribute)
        ):
            add(node, "attr-clear")
        elif isinstance(node, ast.Assign) and len(node.targets) > 1 and any(
            _is_attr_or_subscript(t) for t in node.targets
        ):
            add(node, "chained-assign")
        elif isinstance(node, ast.Lambda):
            for inner in ast.walk(node.body):
                if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Attribute):
                    add(inner, "lambda-chain")
    return found


def _walk_mypy(tree: Any) -> Iterator[tuple[Any, Any]]:
    """Every node of a mypy MypyFile with its parent, without leaving the module.

    mypy's visitors are compiled traits that interpreted code cannot subclass, so this
    walks the (compiled) node classes by their attribute lists instead.
    """
    from mypy.nodes import MypyFile, Node, TypeInfo

    skip = {"node", "info", "analyzed"}  # references to symbols (possibly in other modules)
    stack: list[tuple[Any, Any]] = [(d, None) for d in tree.defs]
    seen: set[int] = set()
    while stack:
        obj, parent = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj, parent
        for name in getattr(type(obj), "__mypyc_attrs__", ()):
            if name in skip or name.startswith("__"):
                continue
            value = getattr(obj, name, None)
            items: Iterable[Any] = value if isinstance(value, (list, tuple)) else (value,)
            for item in items:
                if isinstance(item, Node) and not isinstance(item, (MypyFile, TypeInfo)):
                    stack.append((item, obj))


def _property_owner(info: Any, name: str) -> Any:
    """The class in `info`'s MRO defining `name` as a property, else None."""
    from mypy.nodes import Decorator, FuncDef, OverloadedFuncDef

    for base in info.mro:
        symbol = base.names.get(name)
        if symbol is None:
            continue
        node = symbol.node
        if isinstance(node, Decorator):
            return base if node.func.is_property else None
        if isinstance(node, (FuncDef, OverloadedFuncDef)):
            return base if node.is_property else None
        return None
    return None


def _borrowing_context(node: Any, parent: Any, parents: dict[int, Any]) -> str | None:
    """How `parent` uses `node` when mypyc may borrow it (see `property-borrow`)."""
    from mypy.nodes import CallExpr, ComparisonExpr, IndexExpr, MemberExpr, NameExpr

    if isinstance(parent, MemberExpr) and parent.expr is node:
        grandparent = parents.get(id(parent))
        if isinstance(grandparent, CallExpr) and grandparent.callee is parent:
            return None  # a method call on the result owns it
        return f".{parent.name}"
    if isinstance(parent, ComparisonExpr) and any(op in ("is", "is not") for op in parent.operators):
        return "is"
    if (
        isinstance(parent, CallExpr)
        and isinstance(parent.callee, NameExpr)
        and parent.callee.name in ("isinstance", "len")
        and parent.args
        and parent.args[0] is node
    ):
        return f"{parent.callee.name}()"
    if isinstance(parent, IndexExpr) and parent.base is node:
        return "[]"
    return None


def typed_violations(
    sources: dict[str, tuple[str, str | None]], compiled: Iterable[str] | None = None
) -> list[Violation]:
    """`bytes-concat` and `property-borrow` in the given modules.

    `sources`: {module: (path, source text or None to read the path)}; `compiled`: the
    modules whose classes are compiled (default: the modules in `sources`).
    """
    from mypy import build
    from mypy.modulefinder import BuildSource
    from mypy.nodes import MemberExpr, OpExpr
    from mypy.options import Options
    from mypy.types import Instance, get_proper_type

    native_modules = set(sources if compiled is None else compiled)

    options = Options()
    options.export_types = True
    options.incremental = False
    options.follow_imports = "silent"
    options.ignore_missing_imports = True
    options.preserve_asts = True
    options.python_version = (3, 11)
    result = build.build([BuildSource(path, module, text) for module, (path, text) in sources.items()], options)
    types = result.types
    found: list[Violation] = []
    for module, (path, text) in sources.items():
        tree = result.graph[module].tree
        assert tree is not None
        lines = (text if text is not None else Path(path).read_text()).splitlines()

        def add(line: int, rule: str, note: str = "", path: str = path, lines: list[str] = lines) -> None:
            text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
            found.append(Violation(path, line, rule, f"{text}{note}"))

        nodes = list(_walk_mypy(tree))
        parents = {id(node): parent for node, parent in nodes}
        for node, parent in nodes:
            if isinstance(node, OpExpr) and node.op == "+":
                left = types.get(node.left)
                left = get_proper_type(left) if left is not None else None
                if isinstance(left, Instance) and left.type.fullname == "builtins.bytes":
                    add(node.line, "bytes-concat")
            elif isinstance(node, MemberExpr):
                base = types.get(node.expr)
                base = get_proper_type(base) if base is not None else None
                if not isinstance(base, Instance):
                    continue
                owner = _property_owner(base.type, node.name)
                if owner is None or owner.module_name == module or owner.module_name not in native_modules:
                    continue
                context = _borrowing_context(node, parent, parents)
                if context is not None:
                    add(node.line, "property-borrow", f"  [{owner.name}.{node.name} used as {context}]")
    return found


def native_sources() -> dict[str, tuple[str, str | None]]:
    sys.path.insert(0, str(ROOT))
    from vivait_sip.native import NATIVE_MODULES, source_path

    return {module: (str(source_path(module)), None) for module in NATIVE_MODULES}


def violations(sources: dict[str, tuple[str, str | None]] | None = None) -> list[Violation]:
    """Every forbidden shape in `sources` (default: the compiled modules)."""
    sources = native_sources() if sources is None else sources
    found: list[Violation] = []
    for path, text in sources.values():
        found += syntax_violations(text if text is not None else Path(path).read_text(), path)
    found += typed_violations(sources)
    return sorted(found)


if __name__ == "__main__":
    problems = violations()
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)
