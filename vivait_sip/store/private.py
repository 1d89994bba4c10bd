"""Private files: the data directory 0700, secrets and the database 0600, whatever the umask.

The data directory holds every account's HA1 (password-equivalent: whoever reads it can
register as the user), the TLS key, the admin token and the demo passwords.  Files are
created with their final mode in the `open` call itself (a umask only removes bits), and
files or directories left wider by older versions are narrowed when found.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("vivait_sip.store")

DIR_MODE = 0o700
FILE_MODE = 0o600


def _narrow(path: Path, mode: int) -> None:
    """chmod `path` to `mode` when it grants group/other bits and is ours."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
        os.chmod(path, mode)
        log.warning("event=private_mode_fixed path=%s was=%o now=%o", path, stat.S_IMODE(st.st_mode), mode)


def private_dir(path: Path | str) -> Path:
    """Create `path` (and missing parents) with the leaf 0700; narrow an existing leaf."""
    directory = Path(path)
    if not directory.is_dir():
        directory.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=DIR_MODE)
    _narrow(directory, DIR_MODE)
    return directory


def private_file(path: Path | str) -> Path:
    """Make sure `path` exists (empty if new) with mode 0600; existing content is kept."""
    file = Path(path)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    os.close(fd)
    _narrow(file, FILE_MODE)
    return file


def narrow_existing(*paths: Path | str) -> None:
    """Narrow files that may exist (a database's -wal and -shm) to 0600."""
    for path in paths:
        _narrow(Path(path), FILE_MODE)


def write_private(path: Path | str, data: bytes) -> None:
    """Replace `path` atomically with `data`, mode 0600 from the first byte."""
    file = Path(path)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)  # a stale tmp file of another mode was truncated, not recreated
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
