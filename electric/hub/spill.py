"""
Staging for transactions too big to hold in memory (`IHub.begin`).

A producer hands a big transaction over in chunks long before it commits.
Until the commit resolves them, the chunks wait here, in one append-only file
per open transaction under ``<data_dir>/spill/``, not in Python objects.

Why plain files and no durability: staged changes are worthless after a
crash (every producer redoes an uncommitted transaction: Postgres resends from
its slot's flushed position, an import restarts), so nothing is fsync'd and
the whole directory is emptied when the hub starts.  Writes go through the
OS page cache, which is not the process's memory.

Record format: a 4-byte big-endian length, then a pickle of a list of
``(schema, table, op, key, values, old_values, guard)`` tuples (pickle keeps
`UNCHANGED` as the singleton).  Files are private (0600 in a 0700
directory) like the rest of ELECTRIC_DATA_DIR.  The files are written and read only by this
process, so pickle's trust model fits.  Each record holds at most
``chunk`` changes, so reading one back costs one chunk of memory.

All methods are synchronous and blocking: the hub calls them from threads.
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import threading
from typing import Iterator, List, Sequence

from electric import files
from electric.hub.changes import row_change
from electric.hub.interface import RowChange

_LEN = struct.Struct("!I")


def _to_tuple(c: RowChange) -> tuple:
    return (c.schema, c.table, c.op, tuple(c.key), c.values, c.old_values, c.guard)


class SpillFile:
    """One open transaction's staged changes."""

    def __init__(self, path: str, chunk: int):
        self.path = path
        self.chunk = chunk
        self.changes = 0
        self.records = 0
        self._file = None

    def write(self, changes: Sequence[RowChange]) -> None:
        """Append `changes` (in records of at most `chunk` changes)."""
        if self._file is None:
            # Staged rows are replicated data: private like the rest of ELECTRIC_DATA_DIR.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, files.FILE_MODE)
            self._file = os.fdopen(fd, "ab")
        for i in range(0, len(changes), self.chunk):
            body = pickle.dumps([_to_tuple(c) for c in changes[i:i + self.chunk]], protocol=pickle.HIGHEST_PROTOCOL)
            self._file.write(_LEN.pack(len(body)))
            self._file.write(body)
            self.records += 1
        self.changes += len(changes)

    def chunks(self) -> Iterator[List[RowChange]]:
        """The staged changes, record by record, in the order they were written."""
        if self._file is not None:
            self._file.flush()
        if self.records == 0:
            return
        with open(self.path, "rb") as f:
            for _ in range(self.records):
                head = f.read(_LEN.size)
                if len(head) != _LEN.size:
                    raise OSError(f"{self.path}: staged changes are truncated")
                (n,) = _LEN.unpack(head)
                body = f.read(n)
                if len(body) != n:
                    raise OSError(f"{self.path}: staged changes are truncated")
                yield [row_change(*t) for t in pickle.loads(body)]

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


class Spill:
    """The staging directory: hands out one `SpillFile` per open transaction."""

    def __init__(self, directory: str, chunk: int):
        self.directory = directory
        self.chunk = chunk
        self._lock = threading.Lock()
        self._next = 0

    def reset(self) -> None:
        """Empty the directory (at start: whatever a previous process staged is gone for good)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        files.private_dir(self.directory)

    def open(self) -> SpillFile:
        with self._lock:
            self._next += 1
            n = self._next
        return SpillFile(os.path.join(self.directory, f"{n}.spill"), self.chunk)
