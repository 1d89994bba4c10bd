"""Answers given without a transaction: their To tag, and an error for a request too
malformed to parse fully (RFC 3261 §8.2.7 and §16.3's spirit, as Kamailio's sl module)."""

from __future__ import annotations

import zlib

from .message import Request, canonical_header_name, header_key, new_tag


def stateless_tag(req: Request) -> str:
    """A To tag that is the same for every retransmission of `req` (same branch, Call-ID),
    in every worker process (crc32, not the per-process salted hash())."""
    # Plain statements, not chained property reads inside one f-string: see
    # tests/registrar/test_no_leaks.py for the reference leak this shape was part of.
    via = req.top_via
    cseq = req.cseq
    text = "\x00".join((via.branch or "", req.call_id, str(cseq.number)))
    key = text.encode("utf-8", "surrogateescape")
    return f"s{zlib.crc32(key):x}{zlib.adler32(key):x}"


_STATELESS_COPY = ("via", "from", "to", "call-id", "cseq")


def stateless_error(data: bytes, status: int, reason: str) -> bytes | None:
    """A best-effort error response for a request too malformed to parse fully.

    Copies the raw Via/From/To/Call-ID/CSeq lines it can find.  Without a Via there is no
    way to route a reply, so it returns None and the request is dropped.
    """
    head = data[:16384].split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.replace("\r\n", "\n").split("\n")
    copied: list[str] = []
    copying = False  # the header being read is one we copy (its folded lines follow it)
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            if copying:
                copied[-1] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        key = header_key(name.strip())
        copying = bool(colon) and key in _STATELESS_COPY
        if copying:
            value = value.strip()
            if key == "to" and "tag=" not in value.lower():
                value += f";tag={new_tag()}"
            copied.append(f"{canonical_header_name(key)}: {value}")
    if not any(c.lower().startswith("via:") for c in copied):
        return None
    safe_reason = "".join(ch for ch in reason if ch.isprintable())
    out = [f"SIP/2.0 {status} {safe_reason}", *copied, "Content-Length: 0", "", ""]
    return "\r\n".join(out).encode("utf-8")
