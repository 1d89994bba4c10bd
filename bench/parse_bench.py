"""Parse + serialise throughput of the SIP message parser on one core.

Modes:
  decide  parse, decode what a routing decision needs (Via, CSeq, Call-ID, From, To),
          serialise unchanged (a registrar/UAS answering or a stateless check);
  modify  parse, add a Via and a Record-Route (a proxy forwarding), serialise.

Usage: python bench/parse_bench.py [--seconds 2] [--profile decide|modify]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from collections.abc import Callable

from vivait_sip.sip.message import Message, parse_message

SDP_OFFER = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=sendrecv\r\n"
)
SDP_ANSWER = SDP_OFFER.replace(b"alice", b"bob").replace(b"192.0.2.101", b"192.0.2.201")


def _msg(head: str, body: bytes = b"") -> bytes:
    head = head.replace("{cl}", str(len(body))).replace("\n", "\r\n")
    return head.encode() + b"\r\n" + body


MESSAGES: dict[str, bytes] = {
    "INVITE+SDP": _msg(
        "INVITE sip:bob@biloxi.example.com SIP/2.0\n"
        "Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\n"
        "Max-Forwards: 70\n"
        'To: "Bob" <sip:bob@biloxi.example.com>\n'
        'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\n'
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\n"
        "CSeq: 314159 INVITE\n"
        "Contact: <sip:alice@pc33.atlanta.example.com:5060;transport=udp>\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY\n"
        "Supported: replaces, timer\n"
        "User-Agent: Softphone/1.2.3\n"
        "Content-Type: application/sdp\n"
        "Content-Length: {cl}\n",
        SDP_OFFER,
    ),
    "200+SDP": _msg(
        "SIP/2.0 200 OK\n"
        "Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport=5060;received=192.0.2.101\n"
        'To: "Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf\n'
        'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\n'
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\n"
        "CSeq: 314159 INVITE\n"
        "Contact: <sip:bob@192.0.2.201:5060;transport=udp>\n"
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\n"
        "Supported: replaces, timer\n"
        "Content-Type: application/sdp\n"
        "Content-Length: {cl}\n",
        SDP_ANSWER,
    ),
    "REGISTER+auth": _msg(
        "REGISTER sip:pbx.example.com SIP/2.0\n"
        "Via: SIP/2.0/UDP 192.0.2.55:5060;branch=z9hG4bKnashds7;rport\n"
        "Max-Forwards: 70\n"
        "To: <sip:1001@pbx.example.com>\n"
        "From: <sip:1001@pbx.example.com>;tag=456248\n"
        "Call-ID: 843817637684230@998sdasdh09\n"
        "CSeq: 1826 REGISTER\n"
        "Contact: <sip:1001@192.0.2.55:5060;transport=udp>;expires=3600\n"
        'Authorization: Digest username="1001", realm="pbx.example.com", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="sip:pbx.example.com", '
        'response="6629fae49393a05397450978507c4ef1", algorithm=MD5, cnonce="0a4f113b", '
        'qop=auth, nc=00000001, opaque="5ccc069c403ebaf9f0171e9517f40e41"\n'
        "User-Agent: Softphone/1.2.3\n"
        "Expires: 3600\n"
        "Content-Length: 0\n"
    ),
    "BYE": _msg(
        "BYE sip:alice@pc33.atlanta.example.com:5060;transport=udp SIP/2.0\n"
        "Via: SIP/2.0/UDP 192.0.2.201:5060;branch=z9hG4bKnashds10;rport\n"
        "Max-Forwards: 70\n"
        'From: "Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf\n'
        'To: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774\n'
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\n"
        "CSeq: 231 BYE\n"
        "Content-Length: 0\n"
    ),
}


def decide(data: bytes) -> bytes:
    msg = parse_message(data)
    msg.top_via.branch  # noqa: B018
    msg.cseq  # noqa: B018
    msg.call_id  # noqa: B018
    msg.from_.tag  # noqa: B018
    msg.to.tag  # noqa: B018
    return msg.to_bytes()


def modify(data: bytes) -> bytes:
    msg: Message = parse_message(data)
    msg.push_via("SIP/2.0/UDP proxy.example.com:5060;branch=z9hG4bKproxy1;rport")
    msg.add_record_route("sip:proxy.example.com:5060;lr")
    return msg.to_bytes()


MODES: dict[str, Callable[[bytes], bytes]] = {"decide": decide, "modify": modify}


def rate(fn: Callable[[bytes], bytes], data: bytes, seconds: float) -> float:
    """Messages per second, best of three timed runs of `seconds` / 3 each."""
    fn(data)
    best = 0.0
    for _ in range(3):
        n = 0
        batch = 2000
        start = time.perf_counter()
        deadline = start + seconds / 3
        while True:
            for _ in range(batch):
                fn(data)
            n += batch
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n / (now - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per message type and mode")
    parser.add_argument("--profile", choices=sorted(MODES), help="cProfile one mode instead of timing")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    if args.profile:
        fn = MODES[args.profile]
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20000):
            for data in MESSAGES.values():
                fn(data)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        return
    print(f"{'mode':8} {'message':14} {'bytes':>6} {'msgs/s':>10}")
    for mode, fn in MODES.items():
        per_type = {}
        for name, data in MESSAGES.items():
            per_type[name] = rate(fn, data, args.seconds)
            print(f"{mode:8} {name:14} {len(data):6d} {per_type[name]:10,.0f}")
        # Equal mix of the four types: harmonic mean of the per-type rates.
        overall = len(per_type) / sum(1 / r for r in per_type.values())
        print(f"{mode:8} {'overall mix':14} {'':6} {overall:10,.0f}")


if __name__ == "__main__":
    main()
