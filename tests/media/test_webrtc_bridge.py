"""The WebRTC bridge without sockets: the pure relay and the worker's bridge driven with
made-up datagrams, a stand-in browser made of the same pieces (a STUN check and a DTLS
client from ice_dtls): ICE-lite answers, the DTLS handshake in both roles, G.711 forwarded
both ways with only the RTP header rewritten, the SDP each side sees, a browser whose
checks stop or that closes DTLS (one event with the cause), and what is refused."""

from __future__ import annotations

import contextlib
import struct

import pytest

from vivait_sip.media.ice_dtls import Certificate, DtlsSession, binding_request, is_stun_response
from vivait_sip.media.relay import MediaError, PortPool, Relay, RtpTimeout
from vivait_sip.media.sdpinfo import parse, stream_infos
from vivait_sip.media.webrtc_bridge import WebrtcBridge

BROWSER = ("127.0.0.1", 50000)
PHONE = ("127.0.0.1", 6000)


def chrome_offer(fingerprint: str, *, codecs: str = "111 63 9 0 8 13 110 126", setup: str = "actpass") -> str:
    lines = [
        "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
        "a=extmap-allow-mixed", "a=msid-semantic: WMS",
        f"m=audio 50000 UDP/TLS/RTP/SAVPF {codecs}", "c=IN IP4 127.0.0.1", "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:1 1 udp 2113937151 127.0.0.1 50000 typ host generation 0",
        "a=ice-ufrag:brws", "a=ice-pwd:browserpasswordbrowserpw", "a=ice-options:trickle",
        f"a=fingerprint:sha-256 {fingerprint}", f"a=setup:{setup}", "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level", "a=sendrecv", "a=msid:- 7a1b",
        "a=rtcp-mux", "a=rtcp-rsize",
        "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc", "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2", "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000", "a=rtpmap:110 telephone-event/48000", "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:1001 cname:abc",
    ]
    return "\r\n".join(lines) + "\r\n"


PHONE_SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
             "m=audio 6000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n")


def rtp(seq: int, ts: int, ssrc: int, payload: bytes, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, ts, ssrc) + payload


class Net:
    """Datagrams the bridge sends, by destination."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes, tuple[str, int]]] = []

    def __call__(self, port: int, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((port, data, addr))

    def take(self) -> list[bytes]:
        out = [d for _, d, _ in self.sent]
        self.sent.clear()
        return out


@pytest.fixture
def setup() -> tuple[Relay, WebrtcBridge, Net]:
    relay = Relay("127.0.0.1", PortPool(40000, 40100))
    net = Net()
    bridge = WebrtcBridge(relay, net, clock=lambda: 0.0, consent_s=6.0)
    return relay, bridge, net


def media_attrs(sdp: str) -> dict[str, str | None]:
    media = parse(sdp).media[0]
    return {name: value for name, value in media.attributes}


def connect_browser(relay: Relay, bridge: WebrtcBridge, net: Net, browser_cert: Certificate, to_browser: str,
                    now: float = 1.0) -> DtlsSession:
    """ICE check, then the browser as DTLS client until both sides are connected."""
    attrs = media_attrs(to_browser)
    port = parse(to_browser).media[0].port
    check = binding_request(f"{attrs['ice-ufrag']}:brws", str(attrs["ice-pwd"]))
    bridge.receive(port, check, BROWSER, now)
    [response] = net.take()
    assert is_stun_response(response)
    fingerprint = str(attrs["fingerprint"]).split(" ", 1)[1]
    client = DtlsSession(browser_cert, client=True, fingerprints=[("sha-256", fingerprint)])
    flight = client.start(now)
    for _ in range(6):
        for datagram in flight:
            bridge.receive(port, datagram, BROWSER, now)
        flight = [out for d in net.take() for out in client.receive(d, now)]
        if client.state == "connected" and not flight:
            break
    assert client.state == "connected"
    return client


def test_a_browser_calls_a_phone_g711_forwarded_both_ways(setup: tuple[Relay, WebrtcBridge, Net]) -> None:
    relay, bridge, net = setup
    browser_cert = Certificate()
    to_phone = relay.offer("c1", "browser", chrome_offer(browser_cert.fingerprint), 0.0, transport="RTP/AVP", rtcp_mux="demux")
    # the phone sees plain RTP/AVP: no ICE, DTLS, BUNDLE or RTCP feedback, the codecs as offered
    assert "RTP/AVP 111 63 9 0 8 13 110 126" in to_phone
    for gone in ("ice-", "candidate", "fingerprint", "setup", "group", "mid", "rtcp-fb", "extmap", "ssrc", "rtcp-mux", "UDP/TLS"):
        assert gone not in to_phone, gone
    to_browser = relay.answer("c1", "browser", "phone", PHONE_SDP, 0.0)
    attrs = media_attrs(to_browser)
    session = parse(to_browser)
    assert session.media[0].proto == "UDP/TLS/RTP/SAVPF"
    assert session.has_attribute("ice-lite") and session.attribute("group") == "BUNDLE 0"
    assert attrs["setup"] == "passive" and attrs["mid"] == "0" and "rtcp-mux" in attrs
    assert str(attrs["candidate"]).endswith(f"127.0.0.1 {session.media[0].port} typ host")
    assert "rtcp" not in attrs  # rtcp-mux only
    browser_port = session.media[0].port
    phone_port = parse(to_phone).media[0].port

    # nothing is forwarded before DTLS gives keys
    assert relay.receive(phone_port, rtp(1, 160, 7, b"\xff" * 160), PHONE, 0.5) is None

    client = connect_browser(relay, bridge, net, browser_cert, to_browser)
    assert bridge.status()["secured"] == 1

    # browser -> phone: decrypted, header only rewritten (here: untouched), payload as sent
    payload = bytes(range(160))
    out = relay.receive(browser_port, client.srtp_out.protect(rtp(100, 16000, 0xB0B, payload)), BROWSER, 1.1)
    assert out is not None
    port, datagram, dest = out
    assert (port, dest) == (phone_port, PHONE) and bytes(datagram) == rtp(100, 16000, 0xB0B, payload)
    # phone -> browser: encrypted with the DTLS keys, to the ICE path
    out = relay.receive(phone_port, rtp(5, 800, 0xFEED, payload), PHONE, 1.2)
    assert out is not None
    port, datagram, dest = out
    assert (port, dest) == (browser_port, BROWSER)
    assert client.srtp_in.unprotect(bytes(datagram)) == rtp(5, 800, 0xFEED, payload)
    # the browser's SRTCP reaches the phone demuxed, on its RTCP port
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0xB0B)
    out = relay.receive(browser_port, client.srtp_out.protect_rtcp(rr), BROWSER, 1.3)
    assert out is not None and out[0] == phone_port + 1 and bytes(out[1]) == rr

    # the call ends: close_notify to the browser, the endpoint forgotten
    relay.delete("c1", 2.0)
    [close] = net.take()
    client.receive(close, 2.0)
    assert client.state == "closed" and bridge.status()["endpoints"] == 0


def test_a_phone_calls_a_browser_which_answers_active(setup: tuple[Relay, WebrtcBridge, Net]) -> None:
    relay, bridge, net = setup
    browser_cert = Certificate()
    to_browser = relay.offer("c2", "phone", PHONE_SDP, 0.0, transport="UDP/TLS/RTP/SAVPF", rtcp_mux="offer")
    attrs = media_attrs(to_browser)
    assert attrs["setup"] == "actpass" and "ice-ufrag" in attrs and "rtcp-mux" in attrs
    assert parse(to_browser).media[0].proto == "UDP/TLS/RTP/SAVPF"
    answer = chrome_offer(browser_cert.fingerprint, codecs="0 101", setup="active").replace(
        "a=rtpmap:110 telephone-event/48000", "a=rtpmap:101 telephone-event/8000")
    to_phone = relay.answer("c2", "phone", "browser", answer, 0.0)
    assert "RTP/AVP" in to_phone and "fingerprint" not in to_phone
    client = connect_browser(relay, bridge, net, browser_cert, to_browser)
    browser_port = parse(to_browser).media[0].port
    phone_port = parse(to_phone).media[0].port
    out = relay.receive(phone_port, rtp(9, 1600, 0xAB, b"\x55" * 160), PHONE, 1.5)
    assert out is not None and client.srtp_in.unprotect(bytes(out[1]))[12:] == b"\x55" * 160
    assert out[2] == BROWSER and out[0] == browser_port


def test_the_bridge_is_the_dtls_client_when_the_browser_answers_passive(setup: tuple[Relay, WebrtcBridge, Net]) -> None:
    relay, bridge, net = setup
    browser_cert = Certificate()
    to_browser = relay.offer("c3", "phone", PHONE_SDP, 0.0, transport="UDP/TLS/RTP/SAVPF", rtcp_mux="offer")
    attrs = media_attrs(to_browser)
    answer = chrome_offer(browser_cert.fingerprint, codecs="0", setup="passive")
    relay.answer("c3", "phone", "browser", answer, 0.0)
    port = parse(to_browser).media[0].port
    bridge.receive(port, binding_request(f"{attrs['ice-ufrag']}:brws", str(attrs["ice-pwd"])), BROWSER, 1.0)
    sent = net.take()
    assert is_stun_response(sent[0]) and len(sent) >= 2  # the response, then our ClientHello
    server = DtlsSession(browser_cert, client=False, fingerprints=[("sha-256", str(attrs["fingerprint"]).split()[1])])
    flight = sent[1:]
    for _ in range(6):
        back = [out for d in flight for out in server.receive(d, 1.0)]
        for datagram in back:
            bridge.receive(port, datagram, BROWSER, 1.0)
        flight = net.take()
        if server.state == "connected" and not flight:
            break
    assert server.state == "connected" and bridge.status()["secured"] == 1


def test_a_browser_whose_checks_stop_is_gone_within_the_consent_time(setup: tuple[Relay, WebrtcBridge, Net]) -> None:
    relay, bridge, net = setup
    browser_cert = Certificate()
    relay.offer("c4", "browser", chrome_offer(browser_cert.fingerprint), 0.0, transport="RTP/AVP", rtcp_mux="demux")
    to_browser = relay.answer("c4", "browser", "phone", PHONE_SDP, 0.0)
    connect_browser(relay, bridge, net, browser_cert, to_browser, now=1.0)
    bridge.on_timer(5.0)
    assert not relay.pop_events()
    bridge.on_timer(7.5)  # 6.5 s without a check
    [event] = relay.pop_events()
    assert isinstance(event, RtpTimeout) and event.tag == "browser" and event.leg == "A"
    assert event.cause is not None and event.cause.startswith("WebRTC: ICE consent lost")
    bridge.on_timer(9.0)
    assert not relay.pop_events()  # one event per session


def test_a_browser_closing_dtls_is_gone_a_second_later(setup: tuple[Relay, WebrtcBridge, Net]) -> None:
    relay, bridge, net = setup
    browser_cert = Certificate()
    relay.offer("c5", "browser", chrome_offer(browser_cert.fingerprint), 0.0, transport="RTP/AVP", rtcp_mux="demux")
    to_browser = relay.answer("c5", "browser", "phone", PHONE_SDP, 0.0)
    client = connect_browser(relay, bridge, net, browser_cert, to_browser)
    port = parse(to_browser).media[0].port
    for datagram in client.close():
        bridge.receive(port, datagram, BROWSER, 2.0)
    assert not relay.pop_events()  # its BYE may be on the way: a second's grace
    bridge.on_timer(3.1)
    [event] = relay.pop_events()
    assert isinstance(event, RtpTimeout) and event.cause == "WebRTC: DTLS closed by the browser"


def test_a_wrong_certificate_gives_no_keys(setup: tuple[Relay, WebrtcBridge, Net]) -> None:
    relay, bridge, net = setup
    browser_cert, impostor = Certificate(), Certificate()
    relay.offer("c6", "browser", chrome_offer(browser_cert.fingerprint), 0.0, transport="RTP/AVP", rtcp_mux="demux")
    to_browser = relay.answer("c6", "browser", "phone", PHONE_SDP, 0.0)
    with contextlib.suppress(AssertionError):  # the impostor may believe it connected
        connect_browser(relay, bridge, net, impostor, to_browser)
    [event] = relay.pop_events()
    assert "fingerprint" in str(event.cause)
    assert bridge.status()["secured"] == 0


def test_checks_with_another_password_or_ufrag_are_ignored(setup: tuple[Relay, WebrtcBridge, Net]) -> None:
    relay, bridge, net = setup
    relay.offer("c7", "browser", chrome_offer("AA:BB"), 0.0, transport="RTP/AVP", rtcp_mux="demux")
    to_browser = relay.answer("c7", "browser", "phone", PHONE_SDP, 0.0)
    attrs = media_attrs(to_browser)
    port = parse(to_browser).media[0].port
    bridge.receive(port, binding_request(f"{attrs['ice-ufrag']}:brws", "wrong-password-wrong-pw"), BROWSER, 1.0)
    bridge.receive(port, binding_request("nobody:brws", str(attrs["ice-pwd"])), BROWSER, 1.0)
    assert not net.take() and bridge.status()["stun_ignored"] == 2
    # DTLS from a source no check came from is dropped
    bridge.receive(port, bytes([22]) + b"\xfe\xfd" + bytes(20), ("127.0.0.1", 50001), 1.0)
    assert not net.take()


def test_without_a_bridge_a_webrtc_offer_is_refused() -> None:
    relay = Relay("127.0.0.1", PortPool(40000, 40100))
    with pytest.raises(MediaError) as err:
        relay.offer("c8", "phone", PHONE_SDP, 0.0, transport="UDP/TLS/RTP/SAVPF")
    assert err.value.code == "bad_request"


def test_stream_infos_read_ice_and_dtls_parameters() -> None:
    [info] = stream_infos(parse(chrome_offer("AA:BB")))
    assert (info.ice_ufrag, info.ice_pwd, info.setup, info.mid) == ("brws", "browserpasswordbrowserpw", "actpass", "0")
    assert info.fingerprints == [("sha-256", "AA:BB")]


def test_two_browsers_each_leg_its_own_srtp_and_a_transfer_gives_the_new_party_its_own_certificate(
    setup: tuple[Relay, WebrtcBridge, Net],
) -> None:
    """Browser ↔ browser: DTLS-SRTP on both legs, Opus forwarded (decrypted with one leg's
    keys, encrypted with the other's); then B's other party is replaced by C (an attended
    transfer): B's re-offer keeps its port, ICE credentials, fingerprint and mid (its DTLS
    association stays), C's leg has new ports and a certificate of its own (a browser
    that already spoke DTLS with us must see another fingerprint to start anew)."""
    relay, bridge, net = setup
    cert_a, cert_b, cert_c = Certificate(), Certificate(), Certificate()
    webrtc = "UDP/TLS/RTP/SAVPF"
    to_b = relay.offer("c1", "a", chrome_offer(cert_a.fingerprint), 0.0, transport=webrtc, rtcp_mux="offer")
    attrs_b = media_attrs(to_b)
    assert parse(to_b).media[0].proto == webrtc and attrs_b["setup"] == "actpass"
    to_a = relay.answer("c1", "a", "b", chrome_offer(cert_b.fingerprint, setup="active"), 0.0)
    attrs_a = media_attrs(to_a)
    assert attrs_a["setup"] == "passive" and attrs_a["fingerprint"] == attrs_b["fingerprint"]  # the worker's
    assert "111 63 9 0 8" in to_a  # Opus first, as B answered: nothing to transcode
    client_a = connect_browser(relay, bridge, net, cert_a, to_a)
    client_b = connect_browser(relay, bridge, net, cert_b, to_b)
    port_a, port_b = parse(to_a).media[0].port, parse(to_b).media[0].port
    opus = bytes(range(80))
    out = relay.receive(port_a, client_a.srtp_out.protect(rtp(100, 48000, 0xA, opus, pt=111)), BROWSER, 1.1)
    assert out is not None and out[0] == port_b
    assert client_b.srtp_in.unprotect(bytes(out[1])) == rtp(100, 48000, 0xA, opus, pt=111)
    out = relay.receive(port_b, client_b.srtp_out.protect(rtp(7, 960, 0xB, opus, pt=111)), BROWSER, 1.2)
    assert out is not None and out[0] == port_a
    assert client_a.srtp_in.unprotect(bytes(out[1])) == rtp(7, 960, 0xB, opus, pt=111)

    # C (its PeerConnection re-offering, with another mid) replaces A; B is kept
    offer_c = chrome_offer(cert_c.fingerprint).replace("a=mid:0", "a=mid:1").replace("BUNDLE 0", "BUNDLE 1")
    to_b2 = relay.replace("c1", "a", "c", 2.0, offer_c, transport=webrtc)
    attrs_b2 = media_attrs(to_b2)
    assert parse(to_b2).media[0].port == port_b
    assert {k: attrs_b2[k] for k in ("ice-ufrag", "ice-pwd", "fingerprint", "mid")} == \
        {k: attrs_b[k] for k in ("ice-ufrag", "ice-pwd", "fingerprint", "mid")}
    to_c = relay.answer("c1", "c", "b", chrome_offer(cert_b.fingerprint, setup="active"), 2.0)
    attrs_c = media_attrs(to_c)
    port_c = parse(to_c).media[0].port
    assert port_c not in (port_a, port_b) and attrs_c["mid"] == "1" and attrs_c["setup"] == "passive"
    assert attrs_c["fingerprint"] != attrs_b["fingerprint"] and bridge.status()["own_certs"] == 1
    net.take()  # A's close_notify
    client_c = connect_browser(relay, bridge, net, cert_c, to_c, now=2.5)
    # B (its DTLS untouched) -> C, and C -> B in the stream B already had (A's SSRC)
    out = relay.receive(port_b, client_b.srtp_out.protect(rtp(60, 9600, 0xB, opus, pt=111)), BROWSER, 2.6)
    assert out is not None and out[0] == port_c
    assert client_c.srtp_in.unprotect(bytes(out[1]))[12:] == opus
    out = relay.receive(port_c, client_c.srtp_out.protect(rtp(1, 0, 0xC, opus, pt=111)), BROWSER, 2.7)
    assert out is not None and out[0] == port_b
    plain = client_b.srtp_in.unprotect(bytes(out[1]))
    assert plain[12:] == opus and struct.unpack_from("!I", plain, 8)[0] == 0xA
