"""
A bounded on-disk queue for events that could not be written to Redis.

The returner appends to it while Redis is unreachable; the returner (on its
next call) and the engine (when Redis answers again) drain it, oldest first.
Both run on the master, so an exclusive ``flock`` on the spool file keeps them
from interleaving: an append waits for a drain in progress and vice versa.

Two files in ``directory``:

- ``spool.msgpack``: the events, msgpack ``[tag, data]`` records, append-only.
  An append costs what it writes; it never reads the file.
- ``spool.offset``: how many bytes of it a drain already handed to Redis
  (absent or unreadable: none).

A drain streams the records after that offset and hands them to ``write`` in
chunks (at most DRAIN_CHUNK events or about DRAIN_BYTES bytes; the first chunks
smaller, so an attempt while Redis is still down reads and stages little). After
each chunk ``write`` took, the offset is saved (fsync); once everything is
written the offset is reset and the spool truncated to 0. A ``write`` that
raises changes nothing on disk: its chunk and all after it stay spooled, and the
next drain resumes there. A crash between a ``write`` and the offset update
re-sends that chunk (the recorder's writes are idempotent); nothing unsent is
ever skipped: an offset that does not match the spool file (another file, or
other bytes before the offset) is ignored and the spool re-sent from its start.

``max_bytes`` caps the size of the spool file, bytes already drained included:
what a drain that stopped half-way consumed is reclaimed when a drain reaches
the end. A record cut short by a crash, or unreadable bytes, end the spool:
they and whatever follows are dropped with a warning.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import msgpack

log = logging.getLogger(__name__)

SPOOL_FILE = "spool.msgpack"
OFFSET_FILE = "spool.offset"
DRAIN_CHUNK = 1000  # events per write() at most
DRAIN_BYTES = 1 << 20  # spooled bytes per write(), give or take one record
FIRST_CHUNK = 10  # events in a drain's first write(); x10 per chunk up to DRAIN_CHUNK
READ_SIZE = 1 << 16  # bytes per read of the spool file
FINGERPRINT = 4096  # bytes before the offset whose CRC the offset file keeps

# magic, consumed bytes, inode of the spool file, CRC of the FINGERPRINT bytes before `consumed`, CRC of the rest
_OFFSET = struct.Struct("<4sQQII")
_MAGIC = b"JRS1"


class Spool:
    def __init__(self, directory: str, max_bytes: int):
        self.directory = directory
        self.path = os.path.join(directory, SPOOL_FILE)
        self.offset_path = os.path.join(directory, OFFSET_FILE)
        self.max_bytes = max_bytes
        self.dropped = 0

    def has_data(self) -> bool:
        """Whether anything may wait (one stat(); after a crash mid-drain, maybe only sent events)."""
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
        """Keep events on disk; returns how many fit under max_bytes. Writes only them (and fsyncs)."""
        records = [msgpack.packb([tag, data], use_bin_type=True, default=str) for tag, data in events]
        with self._locked() as fd:
            start = size = os.fstat(fd).st_size
            kept = 0
            for record in records:
                if size + len(record) > self.max_bytes:
                    dropped = len(records) - kept
                    self.dropped += dropped
                    log.error(
                        "job_retry: spool %s is full (%d bytes, spool_max_bytes); dropped %d event(s)",
                        self.path,
                        size,
                        dropped,
                    )
                    break
                kept += 1
                size += len(record)
            if kept:
                _write_all(fd, b"".join(records[:kept]), start)
                os.fsync(fd)
        return kept

    def drain(self, write: Callable[[list[tuple]], None]) -> int:
        """
        Hand every spooled event to `write` (in chunks, oldest first), then empty the spool.

        If `write` raises, the events it did not take stay spooled and the error propagates.
        Returns how many events `write` took.
        """
        done = 0
        finished = False
        with self._locked() as fd:
            stat = os.fstat(fd)
            if not stat.st_size:
                return 0
            size, inode = stat.st_size, stat.st_ino
            offsets = _Offsets(self.offset_path, fd, inode)
            start = offsets.load(size)
            records = _records(fd, start, size, self._max_record(), self.path)
            try:
                chunk, chunk_start, end, limit = [], start, start, FIRST_CHUNK
                for record, end in records:
                    if isinstance(record, list) and len(record) == 2:
                        chunk.append((record[0], record[1]))
                    if end < size and (len(chunk) >= limit or end - chunk_start >= DRAIN_BYTES):
                        if chunk:
                            write(chunk)
                            done += len(chunk)
                        offsets.save(end)
                        chunk, chunk_start, limit = [], end, min(DRAIN_CHUNK, limit * 10)
                if chunk:  # the last one: all of the rest
                    write(chunk)
                    done += len(chunk)
                offsets.reset()  # first: a crash before the truncation re-sends, never skips
                os.ftruncate(fd, 0)
                os.fsync(fd)
                finished = True
            finally:
                records.close()
                offsets.close()
                if done:
                    rest = "" if finished else "; the rest stays spooled"
                    log.warning("job_retry: wrote %d spooled event(s) to Redis%s", done, rest)
        return done

    def _max_record(self) -> int:
        """Longest record a drain buffers: append never writes one over max_bytes (which may have shrunk since)."""
        return max(self.max_bytes, 64 << 20)


def _write_all(fd: int, payload: bytes, start: int) -> None:
    """Append all of payload, or (on error) none of it: a partial record would swallow the next ones."""
    view = memoryview(payload)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        with suppress(OSError):
            os.ftruncate(fd, start)
        raise


def _records(fd: int, start: int, size: int, max_record: int, path: str) -> Iterator[tuple[object, int]]:
    """
    (record, offset just past it) for each record in bytes [start, size) of fd, read READ_SIZE at
    a time. A record cut short at the end, or unreadable bytes, end it with a warning.
    """
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=False, read_size=READ_SIZE, max_buffer_size=max_record + READ_SIZE
    )
    pos = end = start
    while pos < size:
        block = os.pread(fd, min(READ_SIZE, size - pos), pos)
        if not block:
            break
        pos += len(block)
        try:
            unpacker.feed(block)
            for record in unpacker:
                end = start + unpacker.tell()
                yield record, end
        except (ValueError, TypeError, msgpack.exceptions.UnpackException) as exc:  # FormatError, BufferFull, ...
            log.warning(
                "job_retry: dropped a damaged record in %s at byte %d and the %d byte(s) after it (%s)",
                path,
                end,
                size - end,
                type(exc).__name__,
            )
            return
    if end < size:
        log.warning("job_retry: dropped a damaged record at the end of %s (%d byte(s))", path, size - end)


class _Offsets:
    """The offset file: how far into the spool file (this inode, these bytes) drains got."""

    def __init__(self, path: str, spool_fd: int, inode: int):
        self.path = path
        self.spool_fd = spool_fd
        self.inode = inode
        self.fd: int | None = None
        self.saved = False

    def load(self, size: int) -> int:
        try:
            with open(self.path, "rb") as stored:
                raw = stored.read(_OFFSET.size)
        except FileNotFoundError:
            return 0
        except OSError as err:
            log.warning("job_retry: could not read %s (%s); sending the spool from its start", self.path, err)
            self.saved = True  # reset it when done
            return 0
        self.saved = True  # whatever it says, reset it when done
        if len(raw) == _OFFSET.size:
            magic, consumed, inode, fingerprint, check = _OFFSET.unpack(raw)
            if magic == _MAGIC and check == zlib.crc32(raw[:-4]):
                if consumed == 0:
                    return 0
                if inode == self.inode and consumed <= size and fingerprint == self._fingerprint(consumed):
                    return consumed
        log.warning("job_retry: %s does not match %s; sending the spool from its start", self.path, SPOOL_FILE)
        return 0

    def save(self, consumed: int) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        head = _OFFSET.pack(_MAGIC, consumed, self.inode, self._fingerprint(consumed), 0)[:-4]
        os.pwrite(self.fd, head + struct.pack("<I", zlib.crc32(head)), 0)
        os.fsync(self.fd)
        self.saved = True

    def reset(self) -> None:
        if self.saved:
            self.save(0)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _fingerprint(self, consumed: int) -> int:
        if not consumed:
            return 0
        begin = max(0, consumed - FINGERPRINT)
        return zlib.crc32(os.pread(self.spool_fd, consumed - begin, begin))
