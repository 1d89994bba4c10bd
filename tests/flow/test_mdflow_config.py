"""Config models, the deck's INI import and the text renderings."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from vivait_sip.flow.config import FlowConfig, MdflowConfig
from vivait_sip.flow.engine import MdflowEngine
from vivait_sip.flow.ini import MdflowIniError, main_import, parse_mdflow_ini
from vivait_sip.flow.render import render_config, render_prometheus, render_stats

from .helpers import config, flow

DECK_EXAMPLE = """\
[general]
tick_ms=100
estad_interv_seg=10

[flujo_2]
flujo=Cen_Inicio_SIP
en_paso=1
tasa_sal_seg=2
dnis_max=2
dnis_umbral_masivo=10
to_desborda_seg=5

[flujo_3]
flujo=Cen_TrunkInternos
en_paso=0
tasa_sal_seg=2
dnis_max=1
dnis_umbral_masivo=8
to_desborda_seg=5
"""


class _MainConfig(BaseModel):
    """Stand-in for the server config: mdflow lives under the "mdflow" key."""

    mdflow: MdflowConfig


def test_ini_import_reproduces_every_value_of_the_deck_example() -> None:
    cfg = parse_mdflow_ini(DECK_EXAMPLE)
    assert (cfg.tick_ms, cfg.estad_interv_seg) == (100, 10)
    assert [f.model_dump() for f in cfg.flows] == [
        {
            "flujo": "Cen_Inicio_SIP",
            "en_paso": True,
            "tasa_sal_seg": 2.0,
            "dnis_max": 2,
            "dnis_umbral_masivo": 10,
            "to_desborda_seg": 5.0,
        },
        {
            "flujo": "Cen_TrunkInternos",
            "en_paso": False,
            "tasa_sal_seg": 2.0,
            "dnis_max": 1,
            "dnis_umbral_masivo": 8,
            "to_desborda_seg": 5.0,
        },
    ]


def test_ini_general_section_is_optional_and_comments_are_ignored() -> None:
    cfg = parse_mdflow_ini(
        "; header\n[flujo_1]\nflujo=A ; name\ntasa_sal_seg=0.5\ndnis_max=1\n"
        "# full-line comment\ndnis_umbral_masivo=1\nto_desborda_seg=1.5\n"
    )
    assert (cfg.tick_ms, cfg.estad_interv_seg) == (100, 10)
    assert cfg.flows[0].en_paso is False
    assert cfg.flows[0].tasa_sal_seg == 0.5 and cfg.flows[0].to_desborda_seg == 1.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            DECK_EXAMPLE.replace("tasa_sal_seg=2\ndnis_max=1", "tasa_sal_seg=0\ndnis_max=1"),
            "[flujo_3] tasa_sal_seg: must be a number > 0 (got '0')",
        ),
        (
            DECK_EXAMPLE.replace("tasa_sal_seg=2\ndnis_max=1", "tasa_sal_seg=dos\ndnis_max=1"),
            "[flujo_3] tasa_sal_seg: must be a number > 0 (got 'dos')",
        ),
        (
            DECK_EXAMPLE.replace("en_paso=1", "en_paso=si"),
            "[flujo_2] en_paso: must be 0 or 1 (got 'si')",
        ),
        (
            DECK_EXAMPLE.replace("dnis_max=1", "dnis_max=0"),
            "[flujo_3] dnis_max: must be an integer >= 1 (got '0')",
        ),
        (
            DECK_EXAMPLE.replace("dnis_umbral_masivo=8", "dnis_umbral_masivo=2.5"),
            "[flujo_3] dnis_umbral_masivo: must be an integer >= 1 (got '2.5')",
        ),
        (
            DECK_EXAMPLE.replace("to_desborda_seg=5\n\n", "to_desborda_seg=-1\n\n"),
            "[flujo_2] to_desborda_seg: must be a number > 0 (got '-1')",
        ),
        (
            DECK_EXAMPLE.replace("tick_ms=100", "tick_ms=5000"),
            "[general] tick_ms: must be an integer between 1 and 1000 (got '5000')",
        ),
        (
            DECK_EXAMPLE.replace("estad_interv_seg=10", "estad_interv_seg=0"),
            "[general] estad_interv_seg: must be an integer > 0 (got '0')",
        ),
        (DECK_EXAMPLE.replace("dnis_max=2\n", ""), "[flujo_2] dnis_max: missing"),
        (DECK_EXAMPLE.replace("flujo=Cen_TrunkInternos\n", ""), "[flujo_3] flujo: missing"),
        (
            DECK_EXAMPLE.replace("Cen_TrunkInternos", "Cen_Inicio_SIP"),
            "[flujo_3] flujo: duplicate flow name 'Cen_Inicio_SIP' (also in [flujo_2])",
        ),
        (DECK_EXAMPLE.replace("dnis_max=2", "dnis_maximo=2"), "[flujo_2] dnis_maximo: unknown key"),
        (DECK_EXAMPLE.replace("[flujo_3]", "[flujo_2]"), "[flujo_2]: duplicate section"),
        (DECK_EXAMPLE.replace("[flujo_3]", "[flow3]"), "[flow3]: unknown section"),
        (
            DECK_EXAMPLE.replace("dnis_max=1", "dnis_max=1\ndnis_max=2"),
            "[flujo_3] dnis_max: duplicate key",
        ),
        ("tick_ms=100\n", "(before any section): line 1: key outside a section"),
        (
            DECK_EXAMPLE.replace("Cen_TrunkInternos", "Cen Trunk"),
            "[flujo_3] flujo: must be 1-64 of A-Z a-z 0-9 _ . : -",
        ),
    ],
)
def test_malformed_ini_names_section_and_key(text: str, message: str) -> None:
    with pytest.raises(MdflowIniError) as info:
        parse_mdflow_ini(text)
    assert str(info.value).startswith(message)


def test_import_command_prints_json_for_the_main_config(tmp_path: Path) -> None:
    path = tmp_path / "MDflow.conf"
    path.write_text(DECK_EXAMPLE, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    assert main_import(str(path), stdout=out, stderr=err) == 0
    assert err.getvalue() == ""
    document = json.loads(out.getvalue())
    assert _MainConfig.model_validate(document).mdflow == parse_mdflow_ini(DECK_EXAMPLE)
    assert document["mdflow"]["flows"][1]["dnis_umbral_masivo"] == 8


def test_import_command_reports_errors_on_stderr(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("[flujo_1]\nflujo=A\ntasa_sal_seg=x\n", encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    assert main_import(str(path), stdout=out, stderr=err) == 2
    assert out.getvalue() == ""
    assert err.getvalue() == f"{path}: [flujo_1] tasa_sal_seg: must be a number > 0 (got 'x')\n"
    assert main_import(str(tmp_path / "missing.conf"), stdout=out, stderr=err) == 2
    assert "missing.conf: cannot read" in err.getvalue()


def test_json_config_errors_carry_the_config_path() -> None:
    document = {
        "mdflow": {
            "flows": [
                flow("A").model_dump(),
                {**flow("B").model_dump(), "tasa_sal_seg": 0},
            ]
        }
    }
    with pytest.raises(ValidationError) as info:
        _MainConfig.model_validate(document)
    assert info.value.errors()[0]["loc"] == ("mdflow", "flows", 1, "tasa_sal_seg")


def test_duplicate_flow_names_are_rejected_clearly() -> None:
    with pytest.raises(
        ValidationError,
        match=r"flows\.2\.flujo\n.*duplicate flow name 'A' \(first defined at flows\[0\]\)",
    ):
        config(flow("A"), flow("B"), flow("A"))


@pytest.mark.parametrize("value", [2, -1, "yes", 0.5])
def test_en_paso_accepts_only_zero_one_or_booleans(value: object) -> None:
    with pytest.raises(ValidationError, match="must be 0 or 1"):
        FlowConfig.model_validate({**flow().model_dump(), "en_paso": value})


def test_unknown_keys_are_forbidden() -> None:
    with pytest.raises(ValidationError, match="extra"):
        MdflowConfig.model_validate({"tick": 5})
    with pytest.raises(ValidationError, match="extra"):
        FlowConfig.model_validate({**flow().model_dump(), "rate": 1})


def test_render_config_is_one_line_per_flow() -> None:
    assert render_config(parse_mdflow_ini(DECK_EXAMPLE)) == (
        "tick_ms=100 estad_interv_seg=10\n"
        "flow=Cen_Inicio_SIP en_paso=1 tasa_sal_seg=2 dnis_max=2 dnis_umbral_masivo=10"
        " to_desborda_seg=5\n"
        "flow=Cen_TrunkInternos en_paso=0 tasa_sal_seg=2 dnis_max=1 dnis_umbral_masivo=8"
        " to_desborda_seg=5\n"
    )


def _busy_engine() -> MdflowEngine:
    engine = MdflowEngine(
        config(
            flow("Cen_Inicio_SIP", en_paso=1),
            flow("T", tasa_sal_seg=1, dnis_umbral_masivo=2, to_desborda_seg=2.5),
        ),
        now=0.0,
    )
    for i in range(24):
        engine.offer("Cen_Inicio_SIP", "1", i * 0.1)
    engine.offer("T", "900 1", 0.0)
    for dnis in ("900 1", "900 1", "555", "777"):
        engine.offer("T", dnis, 0.0)
    for k in range(1, 101):
        engine.tick(k * 0.1)
    return engine


def test_render_stats_line_format_is_stable() -> None:
    text = render_stats(_busy_engine().snapshot(10.0))
    assert text == (
        "flow=Cen_Inicio_SIP mode=paso interval_s=10 complete=1 in_rate=2.40"
        " admitted_rate=2.40 queued=0 oldest_wait_s=0.00 max_wait_s=0.00 dnis_queues=0"
        " massive=0 massive_dnis=- offered=24 ok=24 agujero=0 desborda=0 abandoned=0\n"
        "flow=T mode=control interval_s=10 complete=1 in_rate=0.50 admitted_rate=0.30"
        " queued=0 oldest_wait_s=0.00 max_wait_s=2.50 dnis_queues=0 massive=1"
        " massive_dnis=900%201 offered=5 ok=3 agujero=1 desborda=1 abandoned=0\n"
    )


PROM_SAMPLE = re.compile(r'^vivait_mdflow_[a-z_]+\{flow="[^"]*"(,outcome="[a-z]+")?\} [0-9.e+-]+$')


def test_prometheus_exposition_is_well_formed() -> None:
    text = render_prometheus(_busy_engine().snapshot(10.0))
    assert text.endswith("\n")
    families: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name.startswith("vivait_mdflow_")
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = kind
        else:
            assert PROM_SAMPLE.match(line), line
            assert line.split("{")[0] in families
    assert families["vivait_mdflow_calls_total"] == "counter"
    assert families["vivait_mdflow_in_rate"] == "gauge"
    assert 'vivait_mdflow_calls_total{flow="T",outcome="desborda"} 1' in text
    assert 'vivait_mdflow_in_rate{flow="Cen_Inicio_SIP"} 2.4' in text
    assert 'vivait_mdflow_massive_dnis{flow="T"} 1' in text
