"""The trace's wire formats and filters, without a server: HEP v3 round trip, sampling per
Call-ID, message selection, and pcap files that tshark and sngrep read."""

from __future__ import annotations

import re
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from vivait_sip.sip.peer import Peer
from vivait_sip.trace.cli import format_record, safe_text
from vivait_sip.trace.feature import make_record, record_bytes
from vivait_sip.trace.hep import PROTO_TCP, PROTO_UDP, call_id_of, decode, encode, sampled
from vivait_sip.trace.match import TraceFilter, scan
from vivait_sip.trace.pcap import PcapWriter

REGISTER = (
    b"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKabc;rport\r\n"
    b"From: \"Ana\" <sip:6140@127.0.0.1>;tag=1\r\n"
    b"To: <sip:6140@127.0.0.1>\r\n"
    b"Call-ID: fmt-1@host\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Contact: <sip:6140@127.0.0.1:5099>\r\n"
    b"Max-Forwards: 70\r\n"
    b"Content-Length: 0\r\n\r\n"
)
OK = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5099;branch=z9hG4bKabc;rport=5099\r\n"
    b"f: <sip:6140@127.0.0.1>;tag=1\r\n"
    b"t: <sip:6140@127.0.0.1>;tag=2\r\n"
    b"i: fmt-1@host\r\n"
    b"CSeq: 1 REGISTER\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_hep3_round_trip_ipv4_and_ipv6() -> None:
    packet = encode(REGISTER, proto=PROTO_UDP, src=("192.0.2.7", 5099), dst=("192.0.2.1", 5060), ts=1700000000.25, capture_id=77, auth_key=b"k3y")
    assert packet[:4] == b"HEP3" and int.from_bytes(packet[4:6], "big") == len(packet)
    hep = decode(packet)
    assert (hep.proto, hep.src, hep.dst, hep.capture_id, hep.auth_key, hep.payload) == (
        PROTO_UDP, ("192.0.2.7", 5099), ("192.0.2.1", 5060), 77, b"k3y", REGISTER,
    )
    assert hep.ts == pytest.approx(1700000000.25)
    six = decode(encode(OK, proto=PROTO_TCP, src=("2001:db8::1", 5061), dst=("[2001:db8::2]", 40000), ts=1.5))
    assert (six.proto, six.src, six.dst, six.auth_key) == (PROTO_TCP, ("2001:db8::1", 5061), ("2001:db8::2", 40000), b"")
    # A name (not an address) is written as the unspecified address of the other side's family.
    mixed = decode(encode(OK, proto=PROTO_UDP, src=("pbx.example.com", 5060), dst=("192.0.2.1", 5060), ts=1.0))
    assert mixed.src == ("0.0.0.0", 5060) and mixed.dst == ("192.0.2.1", 5060)


def test_sampling_keeps_or_drops_whole_dialogs() -> None:
    assert call_id_of(REGISTER) == b"fmt-1@host"
    assert call_id_of(OK) == b"fmt-1@host"  # compact form
    assert sampled(REGISTER, 100) and not sampled(REGISTER, 0)
    bucket = zlib.crc32(b"fmt-1@host") % 10000
    assert sampled(REGISTER, bucket / 100 + 0.01) and not sampled(REGISTER, bucket / 100)
    assert sampled(OK, 50) == sampled(REGISTER, 50)  # request and response go together
    kept = sum(sampled(REGISTER.replace(b"fmt-1@host", f"c{n}".encode()), 25) for n in range(4000))
    assert 800 < kept < 1200


def test_scan_and_filters() -> None:
    info = scan(REGISTER)
    assert (info.request, info.method, info.call_id) == (True, "REGISTER", "fmt-1@host")
    assert "6140" in info.users
    reply = scan(OK)
    assert (reply.request, reply.method, reply.call_id, reply.users) == (False, "REGISTER", "fmt-1@host", ("6140", "6140"))
    assert TraceFilter.create().matches(info, "10.0.0.1")
    assert TraceFilter.create(user="6140", method="register").matches(reply, "10.0.0.1")
    assert not TraceFilter.create(user="6141").matches(info, "10.0.0.1")
    assert TraceFilter.create(call_id="fmt-1@host").matches(reply, "::1")
    assert not TraceFilter.create(call_id="other").matches(reply, "::1")
    assert TraceFilter.create(ip="10.0.0.0/8").matches(info, "10.1.2.3")
    assert not TraceFilter.create(ip="10.0.0.0/8").matches(info, "192.0.2.1")
    assert not TraceFilter.create(ip="10.0.0.1").matches(info, "2001:db8::1")
    assert TraceFilter.from_dict(TraceFilter.create(user="6140", ip="::1").to_dict()) == TraceFilter.create(user="6140", ip="::1")
    for bad in ({"ip": "999.1.1.1"}, {"method": "REG ISTER"}, {"user": "x" * 300}):
        with pytest.raises(ValueError):
            TraceFilter.create(**bad)
    # The quick test on raw bytes never rules out a message the full test selects.
    filters = [TraceFilter.create(**kw) for kw in ({}, {"user": "6140"}, {"user": "614"}, {"method": "REGISTER"}, {"method": "invite"},
               {"call_id": "fmt-1@host"}, {"call_id": "fmt"}, {"ip": "10.0.0.0/8", "user": "6140"}, {"ip": "192.0.2.1"})]
    for message in (REGISTER, OK, REGISTER.replace(b"REGISTER", b"register"), OK.replace(b"i: ", b"Call-ID : ")):
        info = scan(message)
        for flt in filters:
            for host in ("10.1.1.1", "192.0.2.1", "::1"):
                if flt.matches(info, host):
                    assert flt.may_match(message, host), (flt, message)
    assert scan(OK.replace(b"i: ", b"Call-ID : ")).call_id == "fmt-1@host"
    assert not TraceFilter.create(user="6141").may_match(REGISTER, "10.0.0.1")
    # A message the SIP parser would refuse is still traced and matched.
    garbage = b"\x00\xffNOT SIP\r\nCall-ID: g1\r\n\r\n"
    assert scan(garbage).call_id == "g1"


def test_records_keep_the_bytes_and_print_safely() -> None:
    evil = REGISTER.replace(b"Max-Forwards: 70", b"X-Evil: \x1b[2J\xff\xfe")
    record = make_record(1700000000.5, 1, "in", evil, Peer("udp", "192.0.2.7", 5099), ("192.0.2.1", 5060))
    assert record_bytes(record) == evil
    text = format_record(record)
    assert "worker 1 | received udp 192.0.2.7:5099 -> 192.0.2.1:5060" in text
    assert "\x1b" not in text and "\\x1b[2J\\xff\\xfe" in text
    assert safe_text("a\r\nb\tc\x07") == "a\nb\tc\\x07"


def _tshark(path: Path, fields: list[str]) -> list[list[str]]:
    args = ["tshark", "-r", str(path), "-Y", "sip", "-T", "fields"]
    for name in fields:
        args += ["-e", name]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return [line.split("\t") for line in out.stdout.splitlines()]


def test_pcap_opens_in_tshark_and_sngrep(tmp_path: Path) -> None:
    assert shutil.which("tshark"), "tshark is required (Debian package tshark)"
    assert shutil.which("sngrep"), "sngrep is required (Debian package sngrep)"
    path = tmp_path / "trace.pcap"
    big = REGISTER.replace(b"Content-Length: 0\r\n\r\n", b"Content-Type: text/plain\r\nContent-Length: 70000\r\n\r\n" + b"x" * 70000)
    with path.open("wb") as out:
        writer = PcapWriter(out)
        writer.write(1700000000.1, "udp", ("192.0.2.7", 5099), ("192.0.2.1", 5060), REGISTER)
        writer.write(1700000000.2, "udp", ("192.0.2.1", 5060), ("192.0.2.7", 5099), OK)
        writer.write(1700000000.3, "tls", ("2001:db8::7", 40001), ("2001:db8::1", 5061), REGISTER.replace(b"fmt-1", b"fmt-2"))
        writer.write(1700000000.4, "tcp", ("2001:db8::1", 5061), ("2001:db8::7", 40001), OK.replace(b"fmt-1", b"fmt-2"))
        writer.write(1700000000.5, "tcp", ("192.0.2.8", 40002), ("192.0.2.1", 5060), big.replace(b"fmt-1", b"fmt-3"))
    rows = _tshark(path, ["ip.src", "ipv6.src", "sip.Method", "sip.Status-Code", "sip.Call-ID"])
    assert rows == [
        ["192.0.2.7", "", "REGISTER", "", "fmt-1@host"],
        ["192.0.2.1", "", "", "200", "fmt-1@host"],
        ["", "2001:db8::7", "REGISTER", "", "fmt-2@host"],
        ["", "2001:db8::1", "", "200", "fmt-2@host"],
        ["192.0.2.8", "", "REGISTER", "", "fmt-3@host"],  # five TCP segments, reassembled
    ]
    # No checksum or malformed-packet complaints.
    expert = subprocess.run(["tshark", "-r", str(path), "-o", "udp.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE", "-Y", "_ws.expert.severity >= warning || _ws.malformed"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert expert.stdout.strip() == ""
    # sngrep reads the file and exits, its last line counting the dialogs it parsed: fmt-1
    # (UDP) and fmt-2 (IPv6, TCP); it skips messages over 20 KiB (its MAX_CAPTURE_LEN), fmt-3.
    out = subprocess.run(["sngrep", "-N", "-I", str(path)], capture_output=True, text=True, timeout=60, check=True)
    assert re.findall(r"Dialog count: (\d+)", out.stdout)[-1] == "2"


def test_trace_config_reports_every_bad_collector() -> None:
    from vivait_sip.config import ConfigError, config_from_data

    with pytest.raises(ConfigError) as caught:
        config_from_data({"trace": {"hep": {"collectors": ["999.1.1.1:9060", "homer", "h:0", "10.0.0.5:9060"], "sample_percent": 150}}})
    assert caught.value.errors == [
        "trace.hep.collectors[0]: collector: '999.1.1.1' is not an IPv4 address",
        "trace.hep.collectors[1]: collector must be HOST:PORT, got 'homer'",
        "trace.hep.collectors[2]: collector: port 0 in 'h:0'",
        "trace.hep.sample_percent: Input should be less than or equal to 100",
    ]
    config = config_from_data({"trace": {"hep": {"collectors": ["[::1]:9060", "homer.example.com:9060"]}}})
    assert config.trace.hep.collectors == ["[::1]:9060", "homer.example.com:9060"]  # type: ignore[attr-defined]
