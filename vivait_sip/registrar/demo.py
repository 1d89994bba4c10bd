"""The embedded demo's passwords: DATA_DIR/demo-passwords.json, mode 0600, nowhere else.

The store keeps HA1 digests only (docs/users.md); the demo needs the clear passwords to
show them, so they live in a file of their own that only the server's user can read.
They are printed once, when made; `vivait-sip user password NUMBER` sets a new one (the
file is updated, so the demo keeps it across restarts).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from pathlib import Path

from ..store.private import narrow_existing, write_private

FILE_NAME = "demo-passwords.json"


def demo_file(data_dir: Path | str) -> Path:
    return Path(data_dir) / FILE_NAME


def load(data_dir: Path | str) -> dict[str, str]:
    """The stored passwords ({} when there is no file or it is unreadable JSON)."""
    path = demo_file(data_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    narrow_existing(path)
    if not isinstance(raw, dict):
        return {}
    return {str(k): str(v) for k, v in raw.items() if isinstance(v, str) and v}


def save(data_dir: Path | str, passwords: dict[str, str]) -> None:
    write_private(demo_file(data_dir), (json.dumps(passwords, indent=2, sort_keys=True) + "\n").encode())


def ensure(data_dir: Path | str, numbers: Iterable[str], legacy: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Passwords for `numbers`: kept ones, else `legacy` ones (the old meta table), else new
    random ones.  Returns them and the numbers whose password was made just now."""
    stored = load(data_dir)
    legacy = legacy or {}
    passwords: dict[str, str] = {}
    made: list[str] = []
    for number in numbers:
        password = stored.get(number) or legacy.get(number)
        if not password:
            password = secrets.token_urlsafe(9)
            made.append(number)
        passwords[number] = password
    if passwords != stored:
        save(data_dir, passwords)
    return passwords, made


def set_password(data_dir: Path | str, number: str, password: str) -> bool:
    """Replace a demo user's password in the file; False when `number` is not a demo user."""
    stored = load(data_dir)
    if number not in stored:
        return False
    stored[number] = password
    save(data_dir, stored)
    return True
