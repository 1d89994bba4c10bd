"""The dependency contract (docs/architecture.md): imports point one way.

`sip` imports nothing of ours; `transport` only `sip`; `store` no feature; features
(`registrar`, `flow`, and the ones to come) use `sip`, `store`, the contract, the core
config models and the leaf utilities, never the application (`app`, `core`,
`transport`, `workers`, `admin`, `cli`).  The checker reads the source with `ast`, so
an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vivait_sip"

FEATURES = frozenset(("registrar", "flow", "trace", "b2bua", "media", "webrtc", "acd"))
ALLOWED: dict[str, frozenset[str]] = {
    "sip": frozenset(("sip",)),
    "logs": frozenset(),
    "transport": frozenset(("sip", "logs", "transport")),
    "store": frozenset(("store",)),
    "contract": frozenset(("sip", "config")),
    "config": frozenset(("sip", "features", "paths")),  # the registry, lazily: never a feature by name
    "ctlclient": frozenset(("sip", "paths")),
    "paths": frozenset(),  # the default data directory
    "features": frozenset(("contract",)),  # the one place that names features
    "metrics": frozenset(),  # Prometheus text helpers and the core families
    "events": frozenset(("logs",)),  # the event names of the log lines
    "statusview": frozenset(),  # `ctl status` as text
}
FEATURE_MAY_IMPORT = frozenset(("sip", "store", "contract", "config", "logs", "ctlclient", "metrics", "events", "paths"))
# The application: wires everything, imported by no layer (see ALLOWED and the features).
APPLICATION = frozenset(("", "__main__", "app", "core", "workers", "admin", "cli", "native", "overload", "certs", "gcpolicy"))


def area(module: str) -> str:
    """`vivait_sip.registrar.users` → `registrar`; `vivait_sip.core` → `core`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__init__" else ""


def imports_of(module: str, source: str) -> set[str]:
    """Every vivait_sip module `source` imports (relative imports resolved); a package's
    own module is named `pkg.__init__` so that `.` resolves to the package itself."""
    tree = ast.parse(source)
    package = module.split(".")
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vivait_sip"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("vivait_sip"):
                if target == "vivait_sip" or area(target) == "":
                    found.update(f"vivait_sip.{a.name}" for a in node.names)
                else:
                    found.add(target)
    return found


def violations(modules: dict[str, str]) -> list[str]:
    """`module: imports target (rule)` for every import the contract forbids."""
    out = []
    for module, source in sorted(modules.items()):
        src = area(module)
        for target in sorted(imports_of(module, source)):
            dst = area(target)
            if dst in (src, "native") or src in APPLICATION:
                continue  # within an area; the package's import guard; the application
            if src in FEATURES:
                if dst in FEATURE_MAY_IMPORT or dst in FEATURES:
                    continue
                out.append(f"{module}: imports {target} (a feature uses the contract, never the application)")
            elif src in ALLOWED:
                if dst not in ALLOWED[src]:
                    out.append(f"{module}: imports {target} ({src} may import only {sorted(ALLOWED[src]) or 'nothing'})")
            else:
                out.append(f"{module}: {src} is in no layer of tests/test_dependencies.py")
    return out


def package_sources() -> dict[str, str]:
    sources = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        sources[".".join(rel.parts)] = path.read_text(encoding="utf-8")
    return sources


def test_the_tree_keeps_the_dependency_contract() -> None:
    assert violations(package_sources()) == []


def test_planted_violations_are_caught() -> None:
    planted = {
        "vivait_sip.sip.bad": "from ..core import SipCore\n",
        "vivait_sip.transport.bad": "from vivait_sip.config import CoreConfig\n",
        "vivait_sip.store.__init__": "from ..registrar.users import UserRecord\n",
        "vivait_sip.registrar.bad": "def f():\n    from ..app import Application\n",
        "vivait_sip.flow.bad": "import vivait_sip.workers\n",
        "vivait_sip.registrar.good": "from ..sip.message import Request\nfrom ..contract import Feature\nfrom .users import x\n",
    }
    found = violations(planted)
    assert [line.split(":")[0] for line in found] == [
        "vivait_sip.flow.bad",
        "vivait_sip.registrar.bad",
        "vivait_sip.sip.bad",
        "vivait_sip.store.__init__",
        "vivait_sip.transport.bad",
    ]
    assert "vivait_sip.core" in found[2] and "sip may import only ['sip']" in found[2]


def test_media_is_a_feature_area() -> None:
    """media/ (control API, NG client, anchoring) uses sip, contract, config, logs, store
    and other features' public modules (the B2BUA imports its seam); never the application."""
    allowed = {
        "vivait_sip.media.good": "from ..sip.sdp import parse_sdp\nfrom ..contract import Feature\nfrom ..config import CoreConfig\n"
        "from ..logs import throttle\nfrom ..store import Store\nfrom .control import Offer\n",
        "vivait_sip.b2bua.uses_media": "from ..media.feature import MediaFeature\n",
    }
    assert violations(allowed) == []
    planted = {
        "vivait_sip.media.bad_app": "from ..app import Application\n",
        "vivait_sip.media.bad_transport": "def f():\n    from ..transport.manager import TransportManager\n",
        "vivait_sip.media.bad_workers": "import vivait_sip.workers\n",
    }
    assert [line.split(":")[0] for line in violations(planted)] == sorted(planted)
    assert "media" in FEATURES


def test_webrtc_is_a_feature_area() -> None:
    """webrtc/ (the webfon's sessions, REST API, leases) uses the registrar's public modules
    and the contract; the HTTP server's client key is a string it repeats, not an import
    of transport/."""
    allowed = {
        "vivait_sip.webrtc.good": "from ..registrar.feature import RegistrarFeature\nfrom ..contract import Feature\n"
        "from ..registrar.digest import ha1\nfrom .sessions import Sessions\n",
    }
    assert violations(allowed) == []
    planted = {
        "vivait_sip.webrtc.bad_transport": "from ..transport.httpserver import CLIENT_KEY\n",
        "vivait_sip.webrtc.bad_app": "from ..app import Application\n",
    }
    assert [line.split(":")[0] for line in violations(planted)] == sorted(planted)
    assert "webrtc" in FEATURES


def test_relative_imports_resolve_from_packages_and_modules() -> None:
    assert imports_of("vivait_sip.registrar.feature", "from ..sip import message\nfrom . import cli\n") == {
        "vivait_sip.sip",
        "vivait_sip.registrar",
    }
    assert imports_of("vivait_sip.store.__init__", "from ..sip.peer import Peer\nfrom .rows import Row\n") == {
        "vivait_sip.sip.peer",
        "vivait_sip.store.rows",
    }
    assert imports_of("vivait_sip.app", "from .core import SipCore\nfrom . import native\n") == {
        "vivait_sip.core",
        "vivait_sip.native",
    }
