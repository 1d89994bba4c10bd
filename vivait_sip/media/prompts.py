"""Prompts and music-on-hold classes, loaded once and kept encoded in both G.711 laws.

A prompt is a name: `welcome` or `es/welcome` (with or without `.wav`) looked up in the
configured directories, then in the generated default prompts (DEFAULT_DIR, made at
install by scripts/make_prompts.py), then among the built-in sounds made in Python
(`tones.BUILTIN`: moh, ringback, busy, congestion, beep, test-1k).  Names never leave
those directories (no absolute paths, no `..`).  A music-on-hold class is a WAV file or a
directory of WAVs played in name order with a second of silence between them; the class
"default" is the built-in tune unless configured."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .audio import g711
from .audio.tones import BUILTIN, silence
from .audio.wav import RATE, Samples, read_wav

DEFAULT_DIR = Path(__file__).resolve().parent / "audio" / "prompts"
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*")
CACHE_SIZE = 64

Encoded = dict[str, bytes]  # "PCMU"/"PCMA" → bytes


class PromptError(LookupError):
    pass


class Prompts:
    def __init__(self, dirs: Sequence[str | Path] | None = None, moh_classes: dict[str, str] | None = None) -> None:
        self.dirs = [Path(d) for d in (dirs or [])] + [DEFAULT_DIR]
        self.moh_classes = dict(moh_classes or {})
        self._cache: OrderedDict[str, tuple[Encoded, float]] = OrderedDict()

    def prompt(self, name: str) -> tuple[Encoded, float]:
        """(encoded sound, seconds) of a prompt name."""
        return self._cached(f"prompt:{name}", lambda: self._load_prompt(name))

    def moh(self, klass: str) -> tuple[Encoded, float]:
        return self._cached(f"moh:{klass}", lambda: self._load_moh(klass))

    def _cached(self, key: str, load: Callable[[], Samples]) -> tuple[Encoded, float]:
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        samples = load()
        value = ({"PCMU": g711.encode(samples, "PCMU"), "PCMA": g711.encode(samples, "PCMA")}, len(samples) / RATE)
        self._cache[key] = value
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return value

    def find(self, name: str) -> Path | None:
        if not _NAME_RE.fullmatch(name) or ".." in name.split("/"):
            raise PromptError(f"bad prompt name {name!r}")
        for base in self.dirs:
            for candidate in (base / name, base / f"{name}.wav"):
                if candidate.is_file():
                    return candidate
        return None

    def _load_prompt(self, name: str) -> Samples:
        path = self.find(name)
        if path is not None:
            return read_wav(path)
        make = BUILTIN.get(name.removesuffix(".wav"))
        if make is not None:
            return make()
        raise PromptError(f"no prompt {name!r} in {', '.join(str(d) for d in self.dirs)} nor built in")

    def _load_moh(self, klass: str) -> Samples:
        source = self.moh_classes.get(klass)
        if source is None:
            if klass == "default":
                return BUILTIN["moh"]()
            raise PromptError(f"no music-on-hold class {klass!r}")
        path = Path(source)
        if path.is_file():
            return read_wav(path)
        files = sorted(path.glob("*.wav")) if path.is_dir() else []
        if not files:
            raise PromptError(f"music-on-hold class {klass!r}: no WAV file at {source}")
        parts: list[Samples] = []
        for file in files:
            parts += [read_wav(file), silence(1.0)]
        return np.concatenate(parts)
