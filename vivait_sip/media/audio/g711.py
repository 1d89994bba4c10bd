"""G.711 µ-law and A-law (ITU-T G.711) without `audioop` (removed in Python 3.13).

Lookup tables built once with numpy from the reference algorithm (Sun Microsystems'
g711.c, which `audioop` also followed, so results are bit-identical): encoding is one
65,536-entry table indexed by the 16-bit sample, decoding one 256-entry table.  Both
directions are a single numpy `take` per buffer.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

Codec = Literal["PCMU", "PCMA"]
Samples = npt.NDArray[np.int16]

_SEG_U_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_SEG_A_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_BIAS = 0x84
_CLIP = 8159


def _ulaw_decode_table() -> Samples:
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    t = ((u & 0x0F) << 3) + _BIAS
    t <<= (u & 0x70) >> 4
    return np.where(u & 0x80, _BIAS - t, t - _BIAS).astype(np.int16)


def _alaw_decode_table() -> Samples:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _CLIP) + (_BIAS >> 2)
    seg = np.searchsorted(_SEG_U_END, mag, side="left")
    uval = (seg << 4) | ((mag >> (seg + 1)) & 0x0F)
    out = np.where(seg >= 8, 0x7F ^ mask, uval ^ mask)
    # index by the sample's unsigned 16-bit pattern: table[s & 0xFFFF]
    return np.roll(out.astype(np.uint8), -32768)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_SEG_A_END, mag, side="left")
    quant = np.where(seg < 2, (mag >> 1) & 0x0F, (mag >> np.minimum(seg, 7)) & 0x0F)
    aval = (np.minimum(seg, 7) << 4) | quant
    out = np.where(seg >= 8, 0x7F ^ mask, aval ^ mask)
    return np.roll(out.astype(np.uint8), -32768)


ULAW_DECODE = _ulaw_decode_table()
ALAW_DECODE = _alaw_decode_table()
ULAW_ENCODE = _ulaw_encode_table()
ALAW_ENCODE = _alaw_encode_table()

_DECODE = {"PCMU": ULAW_DECODE, "PCMA": ALAW_DECODE}
_ENCODE = {"PCMU": ULAW_ENCODE, "PCMA": ALAW_ENCODE}
# RFC 3551 static payload types
PAYLOAD_TYPES: dict[Codec, int] = {"PCMU": 0, "PCMA": 8}
SILENCE: dict[Codec, int] = {"PCMU": 0xFF, "PCMA": 0xD5}


def encode(samples: Samples | npt.ArrayLike, codec: Codec) -> bytes:
    """16-bit linear PCM → G.711 bytes (one per sample)."""
    pcm = np.asarray(samples, dtype=np.int16)
    return _ENCODE[codec].take(pcm.view(np.uint16)).tobytes()


def decode(payload: bytes | bytearray | memoryview, codec: Codec) -> Samples:
    """G.711 bytes → 16-bit linear PCM."""
    return _DECODE[codec].take(np.frombuffer(payload, dtype=np.uint8))


def codec_of(encoding: str) -> Codec | None:
    """`PCMU`/`PCMA` from an rtpmap encoding name (case-insensitive), else None."""
    name = encoding.upper()
    if name == "PCMU":
        return "PCMU"
    if name == "PCMA":
        return "PCMA"
    return None
