"""
A bounded on-disk queue for events that could not be written to Redis.

The returner appends to it while Redis is unreachable; the returner (on its
next call) and the engine (when Redis answers again) drain it, oldest first.
Both run on the master, so an exclusive ``flock`` keeps them from interleaving.
Records are msgpack ``[tag, data]``; a record cut short by a crash is dropped.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import msgpack

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.msgpack"
DRAIN_CHUNK = 1000


class Spool:
    def __init__(self, directory: str, max_bytes: int):
        self.directory = directory
        self.path = os.path.join(directory, SPOOL_FILE)
        self.max_bytes = max_bytes
        self.dropped = 0

    def has_data(self) -> bool:
        try:
            return os.path.getsize(self.path) > 0
        except OSError:
            return False

    @contextmanager
    def _locked(self) -> Iterator[int]:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def append(self, events: list[tuple]) -> int:
        """Keep events on disk; returns how many fit under max_bytes."""
        with self._locked() as fd:
            size = os.fstat(fd).st_size
            chunks = []
            for tag, data in events:
                record = msgpack.packb([tag, data], use_bin_type=True, default=str)
                if size + len(record) > self.max_bytes:
                    dropped = len(events) - len(chunks)
                    self.dropped += dropped
                    log.error(
                        "job_retry: spool %s is full (%d bytes, spool_max_bytes); dropped %d event(s)",
                        self.path,
                        size,
                        dropped,
                    )
                    break
                chunks.append(record)
                size += len(record)
            if chunks:
                os.write(fd, b"".join(chunks))
                os.fsync(fd)
        return len(chunks)

    def drain(self, write: Callable[[list[tuple]], None]) -> int:
        """
        Hand every spooled event to `write` (in chunks, oldest first), then empty the spool.

        If `write` raises, the events it did not take stay spooled and the error propagates.
        """
        with self._locked() as fd:
            with open(self.path, "rb") as spooled:
                events = list(_records(spooled, self.path))
            done = 0
            try:
                while done < len(events):
                    write(events[done : done + DRAIN_CHUNK])
                    done = min(len(events), done + DRAIN_CHUNK)
            finally:
                _rewrite(fd, events[done:])
        if events:
            log.warning("job_retry: wrote %d spooled event(s) to Redis", done)
        return done


def _records(stream, path: str) -> Iterator[tuple]:
    unpacker = msgpack.Unpacker(stream, raw=False, strict_map_key=False)
    try:
        for record in unpacker:
            if isinstance(record, list) and len(record) == 2:
                yield record[0], record[1]
    except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError, msgpack.exceptions.StackError):
        log.warning("job_retry: dropped a damaged record in %s", path)
        return
    if unpacker.tell() < os.fstat(stream.fileno()).st_size:
        log.warning("job_retry: dropped a damaged record at the end of %s", path)


def _rewrite(fd: int, events: list[tuple]) -> None:
    os.ftruncate(fd, 0)
    if events:
        os.write(fd, b"".join(msgpack.packb([t, d], use_bin_type=True, default=str) for t, d in events))
    os.fsync(fd)
