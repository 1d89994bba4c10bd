"""Where vivait-sip keeps its data when no one says: one answer for `serve`, `ctl` and `user`.

The default data directory does not depend on the working directory, so a server started
from anywhere finds the same store, certificates, admin token and demo passwords, and
`vivait-sip ctl` / `vivait-sip user` find them too:

1. `VIVAIT_SIP_DATA_DIR`, when set (a service's environment, a test);
2. as root: `/var/lib/vivait-sip` (the FHS place for a service's state);
3. otherwise: `$XDG_DATA_HOME/vivait-sip`, else `~/.local/share/vivait-sip`.

`--data-dir DIR` and the config's `data_dir` (relative to the config file) come first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DATA_DIR_ENV = "VIVAIT_SIP_DATA_DIR"
SYSTEM_DATA_DIR = "/var/lib/vivait-sip"
APP_NAME = "vivait-sip"
# How `--help` names the default.
DATA_DIR_HELP = f"${DATA_DIR_ENV}, else {SYSTEM_DATA_DIR} as root, else ~/.local/share/{APP_NAME}"


def default_data_dir(env: Mapping[str, str] | None = None, euid: int | None = None) -> Path:
    """The data directory when neither `--data-dir` nor the config names one (absolute)."""
    env = os.environ if env is None else env
    euid = os.geteuid() if euid is None else euid
    given = env.get(DATA_DIR_ENV, "").strip()
    if given:
        return Path(given).expanduser().absolute()
    if euid == 0:
        return Path(SYSTEM_DATA_DIR)
    xdg = env.get("XDG_DATA_HOME", "").strip()
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is invalid, ignore it
        return Path(xdg) / APP_NAME
    home = env.get("HOME", "").strip() or os.path.expanduser("~")
    return Path(home) / ".local" / "share" / APP_NAME


def resolve_data_dir(value: str | None, config_path: str | Path | None = None) -> Path:
    """`value` as given by the operator: absolute as is; relative to the config file's
    directory when it comes from a config file, else to the working directory (a command
    line option); None or "" → `default_data_dir()`."""
    if not value:
        return default_data_dir()
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    base = Path(config_path).absolute().parent if config_path is not None else Path.cwd()
    return base / path
