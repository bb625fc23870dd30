"""
Electric's files on disk are private to the user it runs as.

ELECTRIC_DATA_DIR holds every replicated row (the hub's log and row state)
and the secret the subscriptions' port-5433 passwords derive from; the
offset store holds client ids, their users and positions.  None of it is
anybody else's business on a shared host: the data directory is created
(or tightened) to 0700 and each file Electric creates there, or in the
offset store's place, to 0600.  SQLite's -wal and -shm files take the mode
of their database file, and existing ones are tightened too.

A directory or file owned by another user (a mounted volume, say) is left
as it is, with a warning: changing it is its owner's call.
"""

from __future__ import annotations

import os
import stat

from twisted.logger import Logger

log = Logger(namespace="electric.files")

DIR_MODE = 0o700
FILE_MODE = 0o600
SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def _tighten(path: str, mode: int) -> None:
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) & ~mode == 0:
        return
    if st.st_uid != os.geteuid():
        log.warn("{path} is readable by other users (mode {mode:o}) and not ours to change",
                 path=path, mode=stat.S_IMODE(st.st_mode))
        return
    os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


def private_dir(path: str) -> None:
    """Create `path` (and missing parents) with mode 0700, or tighten it to 0700 if it exists."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    _tighten(path, DIR_MODE)


def private_file(path: str) -> None:
    """Create `path` empty with mode 0600 if it does not exist, else tighten it to 0600."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        if os.path.isfile(path):  # not a directory or device given by mistake: whoever opens it says why
            _tighten(path, FILE_MODE)
    else:
        os.close(fd)


def private_sqlite(path: str) -> None:
    """A SQLite database file (made 0600 before SQLite creates it) and the sidecar files it has."""
    private_file(path)
    for suffix in SQLITE_SIDECARS:
        if os.path.exists(path + suffix):
            _tighten(path + suffix, FILE_MODE)
