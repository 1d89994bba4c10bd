"""GET /api/cdr on an aiohttp test server, and `vivait-sip ctl cdr` against it."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import socket
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cdr_samples import T0, sample_call

from vivait_sip import cli
from vivait_sip.b2bua import cdr_admin
from vivait_sip.b2bua.cdr import CdrWriter
from vivait_sip.b2bua.cdr_admin import CSV_COLUMNS, add_cdr_routes
from vivait_sip.b2bua.cdr_cli import add_cdr_commands
from vivait_sip.contract import Feature
from vivait_sip.store import Store

Client = TestClient[web.Request, web.Application]


@pytest.fixture
def writer(tmp_path: Path) -> CdrWriter:
    writer = CdrWriter(Store.open(tmp_path))
    writer.write(sample_call("call-1"))
    writer.write(
        sample_call(
            "call-2",
            T0 + 600,
            linked_to="call-1",
            caller='=HYPERLINK("http://evil.example","x")',  # a From chosen by the caller
            user=None,
            callee="+34913346140",
            answered_at=None,
            billable_s=0.0,
            disposition="busy",
            hangup_cause="486 Busy Here",
            hangup_side="callee",
            legs=[],
            extra={},
        )
    )
    return writer


@pytest.fixture
async def client(writer: CdrWriter) -> AsyncIterator[Client]:
    app = web.Application()
    add_cdr_routes(app, lambda: writer)
    async with TestClient(TestServer(app)) as c:
        yield c


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


async def test_json(client: Client, writer: CdrWriter) -> None:
    resp = await client.get("/api/cdr", params={"since": str(T0), "until": str(T0 + 3600)})
    assert resp.status == 200 and resp.content_type == "application/json"
    body = await resp.json()
    assert body["count"] == 2
    assert body["calls"] == [c.to_json() for c in writer.query(T0, T0 + 3600)]
    assert body["calls"][1]["linked_to"] == "call-1" and body["calls"][0]["legs"][1]["trunk"] == "pri"
    # ISO 8601 times, `until` by default now, a user filter
    body = await (await client.get("/api/cdr", params={"since": "2026-03-01T08:05:00Z"})).json()
    assert [c["call_uuid"] for c in body["calls"]] == ["call-2"]
    body = await (await client.get("/api/cdr", params={"since": "0", "user": "6140"})).json()
    assert [c["call_uuid"] for c in body["calls"]] == ["call-1"]
    body = await (await client.get("/api/cdr", params={"since": "2026-03-02T00:00:00+01:00"})).json()
    assert body == {"calls": [], "count": 0}


async def test_csv(client: Client) -> None:
    resp = await client.get("/api/cdr", params={"since": str(T0), "until": str(T0 + 3600), "format": "csv"})
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    text = await resp.text()
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    first, second = csv_rows(text)
    assert datetime.fromisoformat(first["started_at"]).timestamp() == T0
    assert datetime.fromisoformat(first["ended_at"]).timestamp() == T0 + 62.5
    assert datetime.fromisoformat(first["started_at"]).utcoffset() is not None
    assert (first["duration_s"], first["billable_s"], first["disposition"]) == ("62.500", "60.000", "answered")
    legs = json.loads(first["legs"])
    assert [leg["direction"] for leg in legs] == ["in", "out"] and legs[1]["status"] == 200
    assert json.loads(first["extra"])["rtp"] == {"lost": 0, "jitter_ms": 1.5}
    assert first["linked_to"] == "" and second["linked_to"] == "call-1"
    assert second["answered_at"] == "" and second["user"] == ""
    # a spreadsheet must not run the caller's formula; a dialled +number stays a number
    assert second["caller"] == '\'=HYPERLINK("http://evil.example","x")'
    assert second["callee"] == "+34913346140"
    assert second["legs"] == "[]" and second["hangup_side"] == "callee"


async def test_large_exports_are_paged(client: Client, writer: CdrWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cdr_admin, "PAGE", 3)
    for i in range(10):
        writer.write(sample_call(f"p{i}", T0 + 1000 + i))
    want = [c.call_uuid for c in writer.query(0, T0 + 2000)]
    assert len(want) == 12
    for fmt, limit, expected in (("json", None, want), ("json", 7, want[:7]), ("csv", None, want), ("csv", 6, want[:6])):
        params = {"since": "0", "until": str(T0 + 2000), "format": fmt}
        if limit:
            params["limit"] = str(limit)
        text = await (await client.get("/api/cdr", params=params)).text()
        if fmt == "json":
            body = json.loads(text)
            assert [c["call_uuid"] for c in body["calls"]] == expected and body["count"] == len(expected)
        else:
            assert [r["call_uuid"] for r in csv_rows(text)] == expected


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "since is required (ISO 8601 or epoch seconds)"),
        ({"since": "yesterday"}, "'yesterday' is not a time: give ISO 8601"),
        ({"since": "100", "until": "next week"}, "'next week' is not a time"),
        ({"since": "100", "until": "100"}, "until must be after since"),
        ({"since": "100", "format": "xml"}, "format must be json or csv"),
        ({"since": "100", "limit": "0"}, "limit must be a positive whole number"),
        ({"since": "100", "limit": "-3"}, "limit must be a positive whole number"),
    ],
)
async def test_bad_queries(client: Client, params: dict[str, str], message: str) -> None:
    resp = await client.get("/api/cdr", params=params)
    assert resp.status == 400
    assert (await resp.json())["error"].startswith(message)


async def test_no_writer_is_503() -> None:
    app = web.Application()
    add_cdr_routes(app, lambda: None)
    async with TestClient(TestServer(app)) as c:
        resp = await c.get("/api/cdr", params={"since": "0"})
        assert resp.status == 503 and "b2bua.cdr is false" in (await resp.json())["error"]


# ---- vivait-sip ctl cdr ---------------------------------------------------------------------
class CdrCommands(Feature[Any]):
    """Stands in for the B2BUA feature: its `add_commands` adds `ctl cdr`."""

    name = "cdr-commands"

    @classmethod
    def add_commands(cls, sub: Any, ctl_sub: Any) -> None:
        add_cdr_commands(sub, ctl_sub)


@pytest.fixture
def ctl(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    monkeypatch.setattr(cli, "feature_classes", lambda: (CdrCommands,))

    async def run(admin: str, *argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli.main, ["ctl", "--admin", admin, "cdr", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def local(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


async def test_ctl_cdr_table_csv_json(client: Client, ctl: Any, writer: CdrWriter) -> None:
    admin = f"{client.host}:{client.port}"
    period = ("--since", "2026-03-01T08:00:00Z", "--until", str(T0 + 3600))
    code, out, _ = await ctl(admin, *period)
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["START", "CALLER", "CALLEE", "USER", "DID", "TRUNK", "DISPOSITION", "DURATION", "BILLABLE", "HANGUP"]
    assert lines[1].split() == [*local(T0).split(), "6140", "0034913346140", "6140", "-", "pri", "answered", "62s", "60s", "caller:", "normal", "clearing"]
    assert lines[2].split() == [
        *local(T0 + 600).split(), '=HYPERLINK("http://evil.example","x")', "+34913346140", "-", "-", "pri",
        "busy", "62s", "0.0s", "callee:", "486", "Busy", "Here",
    ]
    assert lines[-1] == f"2 call(s) from {local(T0)} to {local(T0 + 3600)}"

    code, out, _ = await ctl(admin, *period, "--format", "csv")
    assert code == 0 and [r["call_uuid"] for r in csv_rows(out)] == ["call-1", "call-2"]
    code, out, _ = await ctl(admin, *period, "--format", "json", "--user", "6140")
    assert code == 0 and json.loads(out)["calls"] == [writer.query(T0, T0 + 1)[0].to_json()]
    code, out, _ = await ctl(admin, *period, "--format", "json", "--limit", "1")
    assert [c["call_uuid"] for c in json.loads(out)["calls"]] == ["call-1"]


async def test_ctl_cdr_empty_period_is_not_an_error(client: Client, ctl: Any) -> None:
    admin = f"{client.host}:{client.port}"
    code, out, _ = await ctl(admin, "--since", "2020-01-01", "--until", "2020-01-02")
    assert code == 0 and out.splitlines() == [f"0 call(s) from {local(datetime(2020, 1, 1).timestamp())} to {local(datetime(2020, 1, 2).timestamp())}"]
    code, out, _ = await ctl(admin, "--since", "2020-01-01", "--until", "2020-01-02", "--format", "csv")
    assert code == 0 and out.splitlines() == [",".join(CSV_COLUMNS)]
    code, out, _ = await ctl(admin, "--since", "2020-01-01", "--until", "2020-01-02", "--format", "json")
    assert code == 0 and json.loads(out) == {"calls": [], "count": 0}
    code, out, _ = await ctl(admin)  # by default: today so far
    today = datetime.now().strftime("%Y-%m-%d")
    assert code == 0 and re.fullmatch(rf"\d+ call\(s\) from {today} 00:00:00 to {today} \S+", out.splitlines()[-1])


async def test_ctl_cdr_errors(ctl: Any, client: Client) -> None:
    with pytest.raises(SystemExit) as exc:
        await ctl(f"{client.host}:{client.port}", "--since", "last tuesday")
    assert exc.value.code == 2
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{sock.getsockname()[1]}"
    code, _, err = await ctl(nobody, "--since", "0")
    assert code == 1 and "cannot reach the admin API" in err
    code, _, err = await ctl(f"{client.host}:{client.port}", "--since", "2026-03-02", "--until", "2026-03-01")
    assert code == 1 and "HTTP 400" in err and "until must be after since" in err



async def test_ctl_cdr_table_shows_no_control_characters(client: Client, ctl: Any, writer: CdrWriter) -> None:
    writer.write(sample_call("esc", T0 + 2000, caller="61\x1b[2J40", hangup_cause="bye\r\nforged line"))
    code, out, _ = await ctl(f"{client.host}:{client.port}", "--since", str(T0 + 2000), "--until", str(T0 + 2001))
    assert code == 0 and "\x1b" not in out and "\r" not in out
    assert out.splitlines()[1].split()[2:4] == ["61?[2J40", "0034913346140"]
    assert out.splitlines()[1].endswith("caller: bye??forged line")
