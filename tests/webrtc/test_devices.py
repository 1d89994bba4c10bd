"""Hard XOR web through a running server: while the webfon's web extension is registered,
calls to the user's number, hard extension or DID reach the browser and the hard phone
does not ring; after logout (or the WebSocket gone) the hard phone rings again."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from harness import Server, loopback_args
from webfon_helpers import Api, Phone, WsPhone, base_config, method_of, sip_response


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = base_config()
    config["b2bua"] = {"dids": {"913346140": "6140"}}
    srv = Server(tmp_path_factory.mktemp("srv"), config, loopback_args(http=True, tls=False)).start()
    yield srv
    srv.kill()


def hard_rings(hard: Phone, timeout: float) -> bool:
    """Whether an INVITE reaches the hard phone within `timeout` (answered 486 if so)."""
    assert hard.udp is not None
    data = hard.udp.recv(timeout)
    while data is not None and method_of(data) != "INVITE":
        data = hard.udp.recv(timeout)
    if data is None:
        return False
    hard.udp.send(sip_response(data, 486, "Busy Here", to_tag="hard1"), hard.port)
    return True


async def call(caller: Phone, number: str) -> int:
    """A call from a fresh socket of the caller's (the last one's final answer, never
    ACKed by this little client, is still being retransmitted to the old one)."""
    phone = Phone(caller.port, caller.user, caller.password, algorithm="MD5")
    try:
        reply = await asyncio.to_thread(phone.invite, number)
        return reply.status
    finally:
        phone.close()


async def test_the_registered_web_extension_takes_the_users_calls(server: Server) -> None:
    udp = server.sip_port("udp")
    port = server.ports[("http", "https")]
    hard = Phone(udp, "6140", "pw-6140", algorithm="MD5")
    caller = Phone(udp, "6142", "pw-6142", algorithm="MD5")
    assert hard.register(aor_user="5140").status == 200
    # no webfon: the hard phone rings
    task = asyncio.ensure_future(call(caller, "6140"))
    assert await asyncio.to_thread(hard_rings, hard, 5.0)
    assert await task == 486
    # the webfon logs in and registers its pool extension
    api = Api(port)
    data = await api.login("6140", "pw-6140")
    web = WsPhone(port, cookie=api.cookie)
    await web.connect()
    try:
        assert (await web.register(data["extension"], data["sip"]["password"])).status == 200
        for number in ("6140", "5140", "913346140"):
            task = asyncio.ensure_future(call(caller, number))
            invite = await web.next_request("INVITE", 5.0)
            assert invite.startswith(b"INVITE sip:wf7000@")
            assert b"From: <sip:6142@" in invite or b'"Caller" <sip:6142@' in invite
            assert not await asyncio.to_thread(hard_rings, hard, 0.5), f"the hard phone rang for {number}"
            await web.send(sip_response(invite, 486, "Busy Here", to_tag="web1"))
            assert await task == 486
        # the browser calls out as its user: the callee sees 6140, not the web extension
        # (proved by the B2BUA's CDR user below)
        await api.call("POST", "/api/logout")
    finally:
        await web.close()
    # logged out: the hard phone rings again
    await asyncio.sleep(0.3)
    task = asyncio.ensure_future(call(caller, "6140"))
    assert await asyncio.to_thread(hard_rings, hard, 5.0)
    assert await task == 486
    assert hard.udp is not None
    while hard.udp.recv(0.3) is not None:  # the B2BUA's ACKs and retransmissions
        pass
    assert hard.register(0, aor_user="5140").status == 200
    hard.close()
    caller.close()


async def test_a_web_extension_registered_but_gone_gives_the_calls_back(server: Server) -> None:
    """The WebSocket closes: its flow's binding goes at once, so the hard phone rings
    while the session waits out its grace period (the pool extension is kept for it)."""
    udp = server.sip_port("udp")
    port = server.ports[("http", "https")]
    hard = Phone(udp, "6140", "pw-6140", algorithm="MD5")
    caller = Phone(udp, "6142", "pw-6142", algorithm="MD5")
    assert hard.register(aor_user="5140").status == 200
    api = Api(port)
    data = await api.login("6140", "pw-6140")
    web = WsPhone(port, cookie=api.cookie)
    await web.connect()
    assert (await web.register(data["extension"], data["sip"]["password"])).status == 200
    await web.close()
    await asyncio.sleep(0.3)
    task = asyncio.ensure_future(call(caller, "913346140"))
    assert await asyncio.to_thread(hard_rings, hard, 5.0)
    assert await task == 486
    assert hard.udp is not None
    while hard.udp.recv(0.3) is not None:  # the B2BUA's ACKs and retransmissions
        pass
    assert hard.register(0, aor_user="5140").status == 200
    hard.close()
    caller.close()
