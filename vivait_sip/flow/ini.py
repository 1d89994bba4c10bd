"""Import of the deck's ``MDflow.conf`` INI format into :class:`MdflowConfig`.

Layout: a ``[general]`` section with ``tick_ms`` and ``estad_interv_seg`` (both
optional), and one ``[flujo_N]`` section per flow. Comments start with ``;`` or ``#``
(also after a value, Asterisk style). Every error names the section and key so an
operator can fix the file without reading code.
"""

from __future__ import annotations

import configparser
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from vivait_sip.flow.config import FLOW_NAME_PATTERN, FlowConfig, MdflowConfig

GENERAL_SECTION = "general"
_FLOW_SECTION = re.compile(r"^flujo_\d+$")
_FLOW_NAME = re.compile(FLOW_NAME_PATTERN)


class MdflowIniError(ValueError):
    """A problem in an MDflow.conf file, located by section and key."""

    def __init__(self, section: str, key: str, message: str) -> None:
        super().__init__(section, key, message)
        self.section = section
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = f"[{self.section}]" if self.section else "(before any section)"
        return f"{where} {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


def _number_gt0(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _int_min(minimum: int) -> Callable[[str], int | None]:
    def parse(text: str) -> int | None:
        try:
            value = int(text)
        except ValueError:
            return None
        return value if value >= minimum else None

    return parse


def _zero_one(text: str) -> bool | None:
    return {"0": False, "1": True}.get(text)


def _tick(text: str) -> int | None:
    value = _int_min(1)(text)
    return value if value is not None and value <= 1000 else None


_GENERAL_KEYS: dict[str, tuple[Callable[[str], object], str]] = {
    "tick_ms": (_tick, "must be an integer between 1 and 1000"),
    "estad_interv_seg": (_int_min(1), "must be an integer > 0"),
}
_FLOW_KEYS: dict[str, tuple[Callable[[str], object], str]] = {
    "flujo": (lambda t: t if _FLOW_NAME.match(t) else None, "must be 1-64 of A-Z a-z 0-9 _ . : -"),
    "en_paso": (_zero_one, "must be 0 or 1"),
    "tasa_sal_seg": (_number_gt0, "must be a number > 0"),
    "dnis_max": (_int_min(1), "must be an integer >= 1"),
    "dnis_umbral_masivo": (_int_min(1), "must be an integer >= 1"),
    "to_desborda_seg": (_number_gt0, "must be a number > 0"),
}
_FLOW_REQUIRED = ("flujo", "tasa_sal_seg", "dnis_max", "dnis_umbral_masivo", "to_desborda_seg")


def _read(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(
        comment_prefixes=(";", "#"),
        inline_comment_prefixes=(";", "#"),
        strict=True,
        empty_lines_in_values=False,
        default_section="\x00no-defaults",
    )
    try:
        parser.read_string(text)
    except configparser.MissingSectionHeaderError as exc:
        raise MdflowIniError("", "", f"line {exc.lineno}: key outside a section") from None
    except configparser.DuplicateSectionError as exc:
        raise MdflowIniError(exc.section, "", f"duplicate section (line {exc.lineno})") from None
    except configparser.DuplicateOptionError as exc:
        raise MdflowIniError(
            exc.section, exc.option, f"duplicate key (line {exc.lineno})"
        ) from None
    except configparser.ParsingError as exc:
        lines = ", ".join(str(lineno) for lineno, _ in exc.errors)
        raise MdflowIniError("", "", f"unparsable line(s) {lines}") from None
    return parser


def _section_values(
    parser: configparser.RawConfigParser,
    section: str,
    keys: dict[str, tuple[Callable[[str], object], str]],
) -> dict[str, object]:
    values: dict[str, object] = {}
    for key, raw in parser.items(section):
        if key not in keys:
            raise MdflowIniError(section, key, f"unknown key (expected one of {', '.join(keys)})")
        convert, message = keys[key]
        value = convert((raw or "").strip())
        if value is None:
            raise MdflowIniError(section, key, f"{message} (got {raw!r})")
        values[key] = value
    return values


def parse_mdflow_ini(text: str) -> MdflowConfig:
    """Parse MDflow.conf text; raise :class:`MdflowIniError` on the first problem."""
    parser = _read(text)
    general: dict[str, object] = {}
    flows: list[FlowConfig] = []
    seen: dict[str, str] = {}
    for section in parser.sections():
        if section == GENERAL_SECTION:
            general = _section_values(parser, section, _GENERAL_KEYS)
            continue
        if not _FLOW_SECTION.match(section):
            raise MdflowIniError(section, "", "unknown section (expected [general] or [flujo_N])")
        values = _section_values(parser, section, _FLOW_KEYS)
        for key in _FLOW_REQUIRED:
            if key not in values:
                raise MdflowIniError(section, key, "missing")
        name = str(values["flujo"])
        if name in seen:
            raise MdflowIniError(
                section, "flujo", f"duplicate flow name {name!r} (also in [{seen[name]}])"
            )
        seen[name] = section
        flows.append(FlowConfig.model_validate(values))
    return MdflowConfig.model_validate({**general, "flows": flows})


def main_import(path: str, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    """``vivait-sip flow import FILE``: print ``{"mdflow": {...}}`` JSON; 0 ok, 2 on error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{path}: cannot read: {exc}", file=stderr)
        return 2
    try:
        config = parse_mdflow_ini(text)
    except MdflowIniError as exc:
        print(f"{path}: {exc}", file=stderr)
        return 2
    json.dump({"mdflow": config.model_dump(mode="json")}, stdout, indent=2)
    stdout.write("\n")
    return 0
