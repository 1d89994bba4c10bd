"""Prompt lookup and music-on-hold classes; `ctl media` text and /metrics lines."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vivait_sip.media.audio import g711
from vivait_sip.media.audio.tones import tone
from vivait_sip.media.audio.wav import write_wav
from vivait_sip.media.prompts import DEFAULT_DIR, PromptError, Prompts
from vivait_sip.media.status import media_metrics, render_media_status


def test_prompts_are_found_in_order_and_cached(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    (mine / "es").mkdir(parents=True)
    write_wav(mine / "es" / "hola.wav", tone(440, 0.5))
    write_wav(mine / "beep.wav", tone(300, 0.1))  # a file overrides a built-in sound
    prompts = Prompts([mine])
    encoded, seconds = prompts.prompt("es/hola")
    assert seconds == 0.5 and len(encoded["PCMU"]) == len(encoded["PCMA"]) == 4000
    assert prompts.prompt("es/hola.wav")[1] == 0.5
    assert prompts.prompt("es/hola")[0] is encoded  # cached
    assert prompts.prompt("beep")[1] == pytest.approx(0.1)
    assert prompts.prompt("ringback")[1] == pytest.approx(4.5)
    for bad in ("../x", "/etc/passwd", "a/../../b", "", ".hidden"):
        with pytest.raises(PromptError):
            prompts.prompt(bad)
    with pytest.raises(PromptError):
        prompts.prompt("no-such-prompt")


def test_the_generated_spoken_prompts_are_there() -> None:
    """scripts/make_prompts.py (run by install.sh) speaks them with espeak-ng."""
    assert shutil.which("espeak-ng"), "espeak-ng is required (Debian package espeak-ng; install.sh adds it)"
    assert (DEFAULT_DIR / "espere.wav").is_file(), "run scripts/install.sh (or scripts/make_prompts.py)"
    encoded, seconds = Prompts().prompt("espere")
    assert 2.0 < seconds < 8.0
    pcm = g711.decode(encoded["PCMA"], "PCMA").astype(float)
    assert np.sqrt(np.mean(pcm**2)) > 500  # speech, not silence


def test_moh_classes(tmp_path: Path) -> None:
    folder = tmp_path / "jazz"
    folder.mkdir()
    write_wav(folder / "2.wav", tone(500, 0.5))
    write_wav(folder / "1.wav", tone(400, 0.5))
    single = tmp_path / "one.wav"
    write_wav(single, tone(600, 0.25))
    prompts = Prompts(moh_classes={"jazz": str(folder), "one": str(single), "empty": str(tmp_path / "nothing")})
    assert prompts.moh("jazz")[1] == pytest.approx(3.0)  # two files, a second of silence after each
    assert prompts.moh("one")[1] == pytest.approx(0.25)
    assert prompts.moh("default")[1] > 5
    for bad in ("empty", "nope"):
        with pytest.raises(PromptError):
            prompts.moh(bad)


STATUSES = [
    {"index": 0, "pid": 100, "sessions": 3, "ports_in_use": 12, "ports_total": 5000, "port_min": 30000, "port_max": 34999,
     "packets_in": 1000, "packets_out": 990, "lost": 10, "loss_pct": 0.99, "players": 1, "recordings": 1, "rtp_timeouts": 0, "cpu_s": 1.5},
    {"index": 1, "error": "media worker 1 is not running"},
]


def test_ctl_media_text() -> None:
    text = render_media_status(STATUSES)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["worker", "pid", "sessions"]
    assert "12/5000 (30000-34999)" in lines[1]
    assert "not answering: media worker 1 is not running" in lines[2]
    assert lines[-1] == "total: 3 sessions, 12/5000 ports, 1000 packets in, 10 lost (0.990 %), 1/2 workers answering"
    assert render_media_status([]) == "media: no built-in media workers"


def test_metrics_pass_promtool() -> None:
    text = "\n".join(media_metrics(STATUSES)) + "\n"
    assert 'vivait_media_sessions{worker="0"} 3' in text and "vivait_media_workers_up 1" in text
    assert shutil.which("promtool"), "promtool is required (Debian package prometheus)"
    proc = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
