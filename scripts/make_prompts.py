"""Generate the default prompts into vivait_sip/media/audio/prompts/ (run by install.sh).

Tones are made in Python (vivait_sip.media.audio.tones); the spoken prompts (Spanish)
with Debian's espeak-ng, converted to 8 kHz mono 16-bit with sox (or, without sox, the
project's own low-pass resampler).  Nothing is fetched.  Exits 0 with a one-line
summary; `--check` exits 1 when the prompts are missing or were made from other texts
(install.sh then regenerates them).  Without espeak-ng only the tones are written and
the line says so."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vivait_sip.media.audio.tones import BUILTIN
from vivait_sip.media.audio.wav import read_wav, write_wav
from vivait_sip.media.prompts import DEFAULT_DIR

VOICE = "es"
SPEED = 145  # words a minute: clear on a phone line
SPEECH = {
    "bienvenida": "Bienvenido. Gracias por llamar.",
    "espere": "Por favor, espere. Su llamada es muy importante para nosotros.",
    "no-disponible": "El número al que llama no está disponible en este momento.",
    "ocupado": "El número al que llama está ocupado. Por favor, inténtelo más tarde.",
    "marque-extension": "Por favor, marque el número de extensión.",
    "opcion-no-valida": "Opción no válida.",
    "aviso-grabacion": "Le informamos de que esta llamada puede ser grabada.",
    "fuera-de-horario": "Nuestro horario de atención ha finalizado. Por favor, llame más tarde.",
    "adios": "Gracias por su llamada. Adiós.",
}
STAMP = ".stamp"


def fingerprint() -> str:
    text = json.dumps({"speech": SPEECH, "voice": VOICE, "speed": SPEED, "tones": sorted(BUILTIN)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def speak(text: str, target: Path, tmp: Path) -> None:
    raw = tmp / "raw.wav"
    subprocess.run(["espeak-ng", "-v", VOICE, "-s", str(SPEED), "-w", str(raw), text], check=True, capture_output=True)
    if shutil.which("sox"):
        subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", str(target), "gain", "-n", "-3"], check=True, capture_output=True)
    else:
        write_wav(target, read_wav(raw))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--check", action="store_true", help="exit 1 when the prompts need making")
    args = parser.parse_args()
    out: Path = args.out
    stamp = out / STAMP
    have_voice = shutil.which("espeak-ng") is not None
    want = f"{fingerprint()} speech={int(have_voice)}"
    if args.check:
        current = stamp.read_text().strip() if stamp.exists() else ""
        print("up to date" if current == want else "missing or made from other texts")
        return 0 if current == want else 1
    out.mkdir(parents=True, exist_ok=True)
    for name, make in BUILTIN.items():
        write_wav(out / f"{name}.wav", make())
    spoken = 0
    if have_voice:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in SPEECH.items():
                speak(text, out / f"{name}.wav", Path(tmp))
                spoken += 1
    stamp.write_text(want + "\n")
    note = "" if have_voice else " (espeak-ng missing: no spoken prompts)"
    print(f"{len(BUILTIN)} tones, {spoken} spoken prompts in {out}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
