"""`vivait-sip check-config` (issue 13, item 5): every error in one run, with its JSON path
and the file's name; addresses and ports checked; the checks across entries and across
sections reported together with the rest; and every command documented (item 8)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from vivait_sip.cli import HIDDEN_COMMANDS, build_parser

CLI = [sys.executable, "-m", "vivait_sip"]
HERE = Path(__file__).resolve().parent
FLOW = {"en_paso": 0, "tasa_sal_seg": 1, "dnis_max": 1, "dnis_umbral_masivo": 1, "to_desborda_seg": 1}


def check(tmp_path: Path, document: object, *, probe: bool = False) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "site.json"
    path.write_text(json.dumps(document))
    env = dict(os.environ)
    if probe:
        env["VIVAIT_SIP_FEATURES"] = "probe_feature:ProbeFeature"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([*CLI, "check-config", str(path)], capture_output=True, text=True, timeout=30, env=env)


def test_five_errors_in_five_sections_are_reported_in_one_run(tmp_path: Path) -> None:
    document = {
        # 1. an address that is no address, among good listeners
        "listen": ["udp:127.0.0.1:5060", "udp:999.1.1.1:5060"],
        # 2. a plain field error
        "sip": {"timers": {"t1_ms": 5}},
        # 3. an extension clash (a check across entries) next to a bad entry of the same list
        "registrar": {
            "users": [
                {"number": "6140", "password": "a"},
                {"number": "x1", "password": "b"},
                {"number": "6142", "password": "c", "extension": "6140"},
            ]
        },
        # 4. a flow name used twice, next to a flow with a bad key
        "mdflow": {"flows": [{**FLOW, "flujo": "A"}, {**FLOW, "flujo": "B", "tasa_sal_seg": 0}, {**FLOW, "flujo": "A"}]},
        # 5. a check across sections (a feature's check_config): flow Z does not exist.
        # Flow B exists but is in error: "no flow 'B'" would be wrong, and is not said.
        "probe": {"flows": ["Z", "B"]},
    }
    proc = check(tmp_path, document, probe=True)
    assert proc.returncode == 2
    path = tmp_path / "site.json"
    assert proc.stderr.splitlines() == [
        f"{path}: listen[1]: '999.1.1.1' is not an IPv4 address",
        f"{path}: sip.timers.t1_ms: Input should be greater than or equal to 10",
        f"{path}: registrar.users[1].number: number must be 2 to 15 digits, got 'x1'",
        f"{path}: mdflow.flows[1].tasa_sal_seg: Input should be greater than 0",
        f"{path}: registrar.users[2].extension: 6140 is already used by users[0] (user 6140)",
        f"{path}: mdflow.flows[2].flujo: duplicate flow name 'A' (first defined at flows[0])",
        f"{path}: probe.flows[0]: no mdflow flow 'Z'",
        f"{path}: 7 errors",
    ]


def test_addresses_ports_and_shapes_are_named_in_the_operators_words(tmp_path: Path) -> None:
    document = {
        "listen": ["tcp:127.0.0.1:99999", "smtp:127.0.0.1:25", 5060, {"address": "tls:[::1]:5061", "advertise": "pbx..example"}],
        "http": {"host": "999.1.1.1"},
        "admin": {"host": "not a host", "port": 99999},
        "registrar": {"users": "6140"},
    }
    proc = check(tmp_path, document)
    lines = [line.split(": ", 1)[1] for line in proc.stderr.splitlines()[:-1]]
    assert lines == [
        "listen[0]: port 99999 is out of range (0-65535)",
        "listen[1]: must be TRANSPORT:HOST:PORT with TRANSPORT one of udp, tcp, tls, ws, wss, got 'smtp:127.0.0.1:25'",
        'listen[2]: must be "TRANSPORT:HOST:PORT" or an object {"address": "TRANSPORT:HOST:PORT", "advertise": "HOST[:PORT]"}',
        "listen[3].advertise: 'pbx..example' is not a valid host name",
        "http.host: '999.1.1.1' is not an IPv4 address",
        "admin.host: 'not a host' is not a valid host name",
        "admin.port: Input should be less than or equal to 65535",
        "registrar.users: must be a JSON array, not a string",
    ]
    assert "instance of" not in proc.stderr


def test_a_document_that_is_no_object_says_so(tmp_path: Path) -> None:
    proc = check(tmp_path, [{"listen": []}])
    assert proc.stderr.splitlines() == [
        f"{tmp_path / 'site.json'}: the document must be a JSON object {{...}}, not an array",
        f"{tmp_path / 'site.json'}: 1 error",
    ]
    proc = check(tmp_path, {"log": [], "sip": {"timers": 5}})
    assert "log: must be a JSON object {...}, not an array" in proc.stderr
    assert "sip.timers: must be a JSON object {...}, not a number" in proc.stderr


def test_serve_checks_the_same_way_and_names_the_file_before_any_socket(tmp_path: Path) -> None:
    path = tmp_path / "site.json"
    path.write_text(json.dumps({"listen": ["udp:999.1.1.1:5060"], "colour": "blue"}))
    proc = subprocess.run([*CLI, "serve", "--config", str(path), "--data-dir", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"config error: {path}: listen[0]: '999.1.1.1' is not an IPv4 address",
        f"config error: {path}: colour: unknown key",
        f"{path}: 2 errors; nothing started",
    ]


# ---- help ---------------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, name: str = "vivait-sip") -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                if child_name not in HIDDEN_COMMANDS:
                    found += _parsers(child, f"{name} {child_name}")
    return found


def test_every_command_and_argument_has_a_help_text() -> None:
    missing = []
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                listed = {choice.dest for choice in action._choices_actions if choice.help}
                missing += [f"{name} {sub}" for sub in action.choices if sub not in HIDDEN_COMMANDS and sub not in listed]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_the_worker_command_is_hidden_and_ctl_shows_its_defaults() -> None:
    top = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "worker" not in top and "check-config" in top
    ctl = " ".join(subprocess.run([*CLI, "ctl", "--help"], capture_output=True, text=True, timeout=30).stdout.split())
    assert "--admin HOST:PORT admin API address (default: the --config file's, else 127.0.0.1:8081" in ctl
    check = subprocess.run([*CLI, "check-config", "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "FILE        the JSON config file to check" in check
