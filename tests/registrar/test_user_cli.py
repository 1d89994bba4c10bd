"""`vivait-sip user ...`, `ctl registrations|unregister` and the registrar admin routes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from harness import free_port

from vivait_sip import cli
from vivait_sip.registrar.admin import add_routes, list_bindings, remove_bindings
from vivait_sip.registrar.digest import Algorithm, ha1
from vivait_sip.registrar.location import Binding, LocationService
from vivait_sip.registrar.users import UserDirectory, records_from_rows
from vivait_sip.store import Store

NOW = 1_700_000_000.0


@pytest.fixture
def nobody() -> str:
    """An admin address where no server listens."""
    return f"127.0.0.1:{free_port()}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---- user commands ------------------------------------------------------------------------
def test_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str], nobody: str) -> None:
    data = str(tmp_path / "var")
    code, out, _ = run(
        capsys,
        "user",
        "add",
        "6140",
        "--password",
        "pw",
        "--name",
        "Ana Díaz",
        "--extension",
        "5140",
        "--web-extension",
        "7140",
        "--data-dir",
        data,
        "--admin",
        nobody,
        "--realm",
        "example.com",
    )
    assert code == 0
    assert "user 6140 saved (extension 5140, realm 'example.com')" in out
    assert "no running server notified" in out
    code, out, _ = run(
        capsys, "user", "add", "6141", "--password", "pw2", "--data-dir", data, "--admin", nobody
    )
    assert code == 0 and "realm 'vivait'" in out  # the embedded default's realm

    code, out, _ = run(capsys, "user", "list", "--data-dir", data)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NUMBER", "EXTENSION", "WEB", "COS", "REALM", "ORIGIN", "NAME"]
    assert lines[1].split() == ["6140", "5140", "7140", "open", "example.com", "cli", "Ana", "Díaz"]
    assert lines[-1] == "2 user(s)"

    code, out, _ = run(capsys, "user", "list", "--json", "--data-dir", data)
    listed = json.loads(out)
    assert [u["number"] for u in listed] == ["6140", "6141"]
    assert "ha1_md5" not in listed[0]

    store = Store.open(data)
    rec = store.get_user("6140")
    assert rec is not None and rec.ha1_sha256 == ha1(Algorithm.SHA256, "6140", "example.com", "pw")

    code, out, _ = run(capsys, "user", "remove", "6140", "--data-dir", data, "--admin", nobody)
    assert code == 0 and "user 6140 removed" in out
    code, _, err = run(capsys, "user", "remove", "6140", "--data-dir", data, "--admin", nobody)
    assert code == 1 and "no user 6140" in err


def test_add_rejects_bad_input_and_conflicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nobody: str
) -> None:
    data = str(tmp_path)
    code, _, err = run(
        capsys, "user", "add", "61x", "--password", "pw", "--data-dir", data, "--admin", nobody
    )
    assert code == 2 and "error: number: number must be 2 to 15 digits, got '61x'" in err
    run(
        capsys,
        "user",
        "add",
        "6140",
        "--password",
        "pw",
        "--extension",
        "5140",
        "--data-dir",
        data,
        "--admin",
        nobody,
    )
    code, _, err = run(
        capsys,
        "user",
        "add",
        "6150",
        "--password",
        "pw",
        "--extension",
        "5140",
        "--data-dir",
        data,
        "--admin",
        nobody,
    )
    assert code == 2 and "error: user 6150: 5140 already belongs to user 6140" in err


def test_realm_from_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nobody: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"domains": ["pbx.example.com"]}))
    code, out, _ = run(
        capsys,
        "user",
        "add",
        "6140",
        "--password",
        "pw",
        "--config",
        str(config),
        "--data-dir",
        str(tmp_path),
        "--admin",
        nobody,
    )
    assert code == 0 and "realm 'pbx.example.com'" in out
    config.write_text(json.dumps({"domainz": []}))
    code, _, err = run(
        capsys,
        "user",
        "add",
        "6140",
        "--password",
        "pw",
        "--config",
        str(config),
        "--data-dir",
        str(tmp_path),
        "--admin",
        nobody,
    )
    assert code == 2 and f"config error: {config}: domainz: unknown key" in err


def test_import_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str], nobody: str) -> None:
    csv_file = tmp_path / "users.csv"
    csv_file.write_text(
        "\ufeffnumber,password,name,extension,web_extension,class_of_service\n"
        '6140,pw0,"Díaz, Ana",5140,7140,closed\n'
        "\n"
        "6141,pw1,,,,\n",
        encoding="utf-8",
    )
    code, out, _ = run(
        capsys, "user", "import", str(csv_file), "--data-dir", str(tmp_path), "--admin", nobody
    )
    assert code == 0 and "2 user(s) imported (realm 'vivait')" in out
    users = {u.number: u for u in Store.open(tmp_path).list_users()}
    assert (users["6140"].name, users["6140"].extension, users["6140"].web_extension) == (
        "Díaz, Ana",
        "5140",
        "7140",
    )
    assert users["6140"].class_of_service == "closed"
    assert users["6141"].extension == "6141"
    assert users["6141"].ha1_md5 == ha1(Algorithm.MD5, "6141", "vivait", "pw1")
    # The WAL file is gone once the last connection closed and checkpointed: read what is there.
    assert all(b"pw1" not in path.read_bytes() for path in tmp_path.glob("vivait.db*"))


def test_import_minimal_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nobody: str
) -> None:
    csv_file = tmp_path / "users.csv"
    csv_file.write_text("Password,Number\nsecret,6140\n")
    code, _, _ = run(
        capsys, "user", "import", str(csv_file), "--data-dir", str(tmp_path), "--admin", nobody
    )
    assert code == 0
    assert [u.number for u in Store.open(tmp_path).list_users()] == ["6140"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", ["line 1: empty file"]),
        ("number,name\n6140,x\n", ["line 1: bad header (missing column(s) password)"]),
        ("number,password,room\n6140,x,1\n", ["line 1: bad header (unknown column(s) room)"]),
        (
            "number,password,extension,class_of_service\n"
            "6140,pw,5140,open\n"
            "61a,pw,,open\n"
            "6142,,,open\n"
            "6143,pw,,vip\n"
            "6140,pw,,open\n"
            "6144,pw\n"
            '6145,"multi\nline",,open\n'
            "6146,pw,5140,open\n",
            [
                "line 3: number: number must be 2 to 15 digits, got '61a'",
                "line 4: password (or ha1_md5 + ha1_sha256) is required",
                "line 5: class_of_service: Input should be 'open' or 'closed'",
                "line 6: user 6140 already on line 2",
                "line 7: 2 fields, the header has 4",
            ],
        ),
    ],
)
def test_import_errors_name_the_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    nobody: str,
    content: str,
    expected: list[str],
) -> None:
    csv_file = tmp_path / "users.csv"
    csv_file.write_text(content)
    code, _, err = run(
        capsys, "user", "import", str(csv_file), "--data-dir", str(tmp_path), "--admin", nobody
    )
    assert code == 2
    for line in expected:
        assert f"{csv_file}: {line}" in err
    assert Store.open(tmp_path).list_users() == []  # one bad row imports nothing


def test_import_conflict_with_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nobody: str
) -> None:
    run(
        capsys,
        "user",
        "add",
        "6140",
        "--password",
        "pw",
        "--extension",
        "5140",
        "--data-dir",
        str(tmp_path),
        "--admin",
        nobody,
    )
    csv_file = tmp_path / "users.csv"
    csv_file.write_text("number,password,extension\n6150,pw,5140\n")
    code, _, err = run(
        capsys, "user", "import", str(csv_file), "--data-dir", str(tmp_path), "--admin", nobody
    )
    assert code == 2 and "user 6150: 5140 already belongs to user 6140" in err


def test_missing_csv_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], nobody: str) -> None:
    code, _, err = run(
        capsys,
        "user",
        "import",
        str(tmp_path / "nope.csv"),
        "--data-dir",
        str(tmp_path),
        "--admin",
        nobody,
    )
    assert code == 2 and "No such file" in err


# ---- admin routes with real services ------------------------------------------------------
class RegistrarStandIn:
    """The feature's surface the routes use, over real store/directory/location objects."""

    def __init__(self, data_dir: Path) -> None:
        self.store = Store.open(data_dir)
        self.users = UserDirectory("vivait")
        self.location = LocationService(self.store, clock=lambda: NOW)
        self.reload_users()

    def reload_users(self) -> int:
        self.users.load(records_from_rows(self.store.list_users()))
        return len(self.users)

    async def registrations(self, aor: str | None) -> list[dict[str, object]]:
        return list_bindings(self.location, aor)

    async def unregister(self, aor: str) -> int:
        return remove_bindings(self.location, aor)


@pytest.fixture
def registrar(tmp_path: Path) -> RegistrarStandIn:
    reg = RegistrarStandIn(tmp_path)
    reg.location.put(
        Binding(
            aor="sip:6140@example.com",
            contact="sip:6140@192.0.2.1:5060",
            expires_at=NOW + 120,
            transport="udp",
            source_host="192.0.2.1",
            source_port=5060,
            user_agent="baresip",
            q=0.5,
        )
    )
    reg.location.put(
        Binding(
            aor="sip:6140@example.com",
            contact="sip:6140@[2001:db8::1]:5070;transport=tcp",
            expires_at=NOW + 60,
            transport="tcp",
            source_host="2001:db8::1",
            source_port=5070,
            instance='"<urn:uuid:1>"',
            reg_id=1,
            path=["<sip:edge;lr>"],
        )
    )
    reg.location.put(
        Binding(aor="sip:6140@other.example", contact="sip:6140@192.0.2.9", expires_at=NOW + 30)
    )
    reg.location.put(
        Binding(aor="sip:6141@example.com", contact="sip:6141@192.0.2.2", expires_at=NOW + 30)
    )
    reg.location.put(
        Binding(aor="sip:6142@example.com", contact="sip:6142@192.0.2.3", expires_at=NOW - 1)
    )
    return reg


@pytest.fixture
async def client(
    registrar: RegistrarStandIn,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    add_routes(app, registrar)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_list_registrations(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/api/registrations")
    assert resp.status == 200
    body = await resp.json()
    assert body["count"] == 4  # the expired one is not listed
    first = body["registrations"][0]
    assert first == {
        "aor": "sip:6140@example.com",
        "contact": "sip:6140@[2001:db8::1]:5070;transport=tcp",
        "transport": "tcp",
        "source": "[2001:db8::1]:5070",
        "expires_in": 60,
        "user_agent": "",
        "instance": '"<urn:uuid:1>"',
        "reg_id": 1,
        "q": 1.0,
        "path": ["<sip:edge;lr>"],
    }
    assert body["registrations"][1]["source"] == "192.0.2.1:5060"


async def test_filter_by_aor_or_bare_user(client: TestClient[web.Request, web.Application]) -> None:
    body = await (
        await client.get("/api/registrations", params={"aor": "sip:6140@EXAMPLE.com"})
    ).json()
    assert {r["aor"] for r in body["registrations"]} == {"sip:6140@example.com"} and body[
        "count"
    ] == 2
    body = await (await client.get("/api/registrations", params={"aor": "6140"})).json()
    assert {r["aor"] for r in body["registrations"]} == {
        "sip:6140@example.com",
        "sip:6140@other.example",
    }
    body = await (
        await client.get("/api/registrations", params={"aor": "sip:9999@example.com"})
    ).json()
    assert body == {"registrations": [], "count": 0}
    resp = await client.get("/api/registrations", params={"aor": "sip:"})
    assert resp.status == 400


async def test_unregister(
    client: TestClient[web.Request, web.Application], registrar: RegistrarStandIn
) -> None:
    resp = await client.delete("/api/registrations")
    assert resp.status == 400
    resp = await client.delete("/api/registrations", params={"aor": "sip:6140@example.com"})
    assert await resp.json() == {"removed": 2}
    assert registrar.location.bindings("sip:6140@example.com") == []
    registrar.location.flush()
    assert {b.aor for b in registrar.store.load_bindings()} == {
        "sip:6140@other.example",
        "sip:6141@example.com",
        "sip:6142@example.com",
    }
    resp = await client.delete("/api/registrations", params={"aor": "6140"})
    assert await resp.json() == {"removed": 1}


async def test_users_and_reload(
    client: TestClient[web.Request, web.Application],
    registrar: RegistrarStandIn,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await (await client.get("/api/users")).json() == {"users": [], "count": 0}
    code = await asyncio.to_thread(
        cli.main,
        [
            "user",
            "add",
            "6140",
            "--password",
            "pw",
            "--data-dir",
            str(tmp_path),
            "--admin",
            f"{client.host}:{client.port}",
        ],
    )
    assert code == 0
    assert (
        f"running server at {client.host}:{client.port} notified: 1 users loaded"
        in capsys.readouterr().out
    )
    body = await (await client.get("/api/users")).json()
    assert (
        body["count"] == 1
        and body["users"][0]["number"] == "6140"
        and "ha1_md5" not in body["users"][0]
    )
    assert registrar.users.ha1_lookup("6140", "vivait", Algorithm.MD5) == ha1(
        Algorithm.MD5, "6140", "vivait", "pw"
    )
    resp = await client.post("/api/users/reload")
    assert await resp.json() == {"ok": True, "users": 1}


async def test_ctl_registrations_and_unregister(
    client: TestClient[web.Request, web.Application], capsys: pytest.CaptureFixture[str]
) -> None:
    admin = f"{client.host}:{client.port}"
    code = await asyncio.to_thread(cli.main, ["ctl", "--admin", admin, "registrations", "6140"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split() == ["AOR", "CONTACT", "TRANSPORT", "SOURCE", "EXPIRES", "Q", "USER-AGENT"]
    assert out[2].split() == [
        "sip:6140@example.com",
        "sip:6140@192.0.2.1:5060",
        "udp",
        "192.0.2.1:5060",
        "120s",
        "0.5",
        "baresip",
    ]
    assert out[-1] == "3 binding(s)"
    code = await asyncio.to_thread(cli.main, ["ctl", "--admin", admin, "registrations", "--json"])
    assert json.loads(capsys.readouterr().out)["count"] == 4
    code = await asyncio.to_thread(
        cli.main, ["ctl", "--admin", admin, "unregister", "sip:6141@example.com"]
    )
    assert (
        code == 0
        and capsys.readouterr().out.strip() == "1 binding(s) removed for sip:6141@example.com"
    )


def test_ctl_without_a_server(capsys: pytest.CaptureFixture[str], nobody: str) -> None:
    code, _, err = run(capsys, "ctl", "--admin", nobody, "registrations")
    assert code == 1 and "cannot reach the admin API" in err
