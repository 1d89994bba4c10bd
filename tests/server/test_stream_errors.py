"""Malformed and unframeable input over TCP is answered over that connection, whatever
its Via says, before the connection closes (RFC 3261 §18.3, RFC 4475 §3.1.2.15, §3.1.2.4,
§3.1.1.8), with one worker and with two."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Server, loopback_args

pytestmark = pytest.mark.timeout(60)

# RFC 4475 3.1.2.15 as distributed: the header block ends without its blank line.
BADDN = (
    b"OPTIONS sip:t.watson@example.org SIP/2.0\r\n"
    b"Via:     SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw\r\n"
    b"Max-Forwards:      70\r\n"
    b"From:    Bell, Alexander <sip:a.g.bell@example.com>;tag=43\r\n"
    b"To:      Watson, Thomas <sip:t.watson@example.org>\r\n"
    b"Call-ID: baddn.31415@c.example.com\r\n"
    b"Accept: application/sdp\r\n"
    b"CSeq:    3923239 OPTIONS\r\n"
    b"l: 0\r\n"
)
# RFC 4475 3.1.2.4: out-of-range numbers, and a folded Contact after the Call-ID.
SCALAR02 = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3\r\n"
    b"To: <sip:user@example.com>\r\n"
    b"From: <sip:user@example.com>;tag=239232jh3\r\n"
    b"CSeq: 36893488147419103232 REGISTER\r\n"
    b"Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32\r\n"
    b"Max-Forwards: 300\r\n"
    b"Expires: 1" + b"0" * 100 + b"\r\n"
    b"Contact: <sip:user@host129.example.com>\r\n"
    b"  ;expires=280297596632815\r\n"
    b"Content-Length: 0\r\n\r\n"
)
REGISTER = (
    b"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492\r\n"
    b"To: <sip:6140@127.0.0.1>\r\nFrom: <sip:6140@127.0.0.1>;tag=43251j3j324\r\n"
    b"Max-Forwards: 8\r\nI: dblreq.0ha0isndaksdj99sdfafnl3lk233412\r\n"
    b"Contact: <sip:6140@192.0.2.125>\r\nCSeq: 8 REGISTER\r\nContent-Length: 0\r\n\r\n\r\n"
)


@pytest.fixture(scope="module", params=[1, 2], ids=["1worker", "2workers"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("stream"), args=[*loopback_args(tls=False), "--workers", str(request.param)])
    srv.start()
    yield srv
    srv.stop()


def exchange(port: int, data: bytes, *, half_close: bool = False) -> tuple[list[bytes], bool]:
    """Send `data` over a new TCP connection; the messages received and whether the server
    closed the connection (within 5 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        closed = False
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except TimeoutError:
            pass
    return [m for m in received.split(b"\r\n\r\n") if m.startswith(b"SIP/2.0")], closed


def header(message: bytes, name: bytes) -> bytes:
    for line in message.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() in (name, {b"call-id": b"i"}.get(name)):
            return value.strip()
    return b""


def test_an_unterminated_header_block_is_answered_when_the_client_half_closes(server: Server) -> None:
    answers, closed = exchange(server.sip_port("tcp"), BADDN, half_close=True)
    assert [a.split(b"\r\n")[0] for a in answers] == [b"SIP/2.0 400 Bad Request (Display name needs quotes)"]
    assert header(answers[0], b"call-id") == b"baddn.31415@c.example.com"
    assert closed


def test_a_folded_header_is_not_glued_to_the_call_id_of_a_stateless_400(server: Server) -> None:
    answers, _ = exchange(server.sip_port("tcp"), SCALAR02, half_close=True)
    assert answers and answers[0].startswith(b"SIP/2.0 400 Bad Request (CSeq number out of range)")
    assert header(answers[0], b"call-id") == b"scalar02.23o0pd9vanlq3wnrlnewofjas9ui32"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(3)
        udp.sendto(SCALAR02, ("127.0.0.1", server.sip_port("udp")))
        reply = udp.recv(65536)
    assert header(reply, b"call-id") == b"scalar02.23o0pd9vanlq3wnrlnewofjas9ui32"


def test_messages_framed_before_garbage_are_answered_before_the_connection_closes(server: Server) -> None:
    answers, closed = exchange(server.sip_port("tcp"), REGISTER + b"Content-Type: nonsense\r\n\r\n")
    assert [a.split(b"\r\n")[0] for a in answers] == [b"SIP/2.0 401 Unauthorized"]
    assert header(answers[0], b"call-id") == b"dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert closed


def test_an_oversized_message_gets_513_before_the_connection_closes(server: Server) -> None:
    big = SCALAR02.replace(b"Content-Length: 0\r\n\r\n", b"X-Filler: " + b"a" * 70_000 + b"\r\n")
    answers, closed = exchange(server.sip_port("tcp"), big)
    assert [a.split(b"\r\n")[0] for a in answers] == [b"SIP/2.0 513 Message Too Large"]
    assert closed


def test_the_server_still_serves_afterwards(server: Server, tmp_path: Path) -> None:
    answers, _ = exchange(server.sip_port("tcp"), REGISTER, half_close=True)
    assert answers[0].startswith(b"SIP/2.0 401")
