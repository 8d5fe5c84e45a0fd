"""The on-disk spool alone: files only, no Redis."""

import logging
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import msgpack
import pytest
from salt_job_retry import spool as spool_module
from salt_job_retry.spool import DRAIN_BYTES, DRAIN_CHUNK, FIRST_CHUNK, READ_SIZE, Spool


def events(n, start=0, size=20):
    return [(f"salt/job/{i:020d}/ret/m", {"i": i, "pad": "x" * size}) for i in range(start, start + n)]


class Collect:
    """A `write` that keeps what it is given and fails on the calls listed in `fail`."""

    def __init__(self, fail=()):
        self.chunks = []
        self.calls = 0
        self.fail = set(fail)

    def __call__(self, chunk):
        self.calls += 1
        if self.calls in self.fail:
            raise ConnectionError("redis down")
        self.chunks.append(list(chunk))

    @property
    def events(self):
        return [(tag, data) for chunk in self.chunks for tag, data in chunk]


class Reads:
    """Counts bytes read from files through os.read / os.pread / open()."""

    def __init__(self, monkeypatch):
        self.bytes = 0
        self.opened = []
        real_read, real_pread, real_open = os.read, os.pread, open

        def read(fd, n):
            data = real_read(fd, n)
            self.bytes += len(data)
            return data

        def pread(fd, n, offset):
            data = real_pread(fd, n, offset)
            self.bytes += len(data)
            return data

        def opened(path, *args, **kwargs):
            self.opened.append(str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "read", read)
        monkeypatch.setattr(os, "pread", pread)
        monkeypatch.setattr("builtins.open", opened)


def fill(spool, n, size=20):
    """n events straight into the spool file (fast: one write, no fsync per event)."""
    os.makedirs(spool.directory, exist_ok=True)
    with open(spool.path, "ab") as f:
        f.write(b"".join(msgpack.packb([t, d], use_bin_type=True) for t, d in events(n, size=size)))


@pytest.fixture
def spool(tmp_path):
    return Spool(str(tmp_path / "spool"), 64 << 20)


def test_append_then_drain_round_trips_in_order(spool):
    assert not spool.has_data()
    assert spool.drain(Collect()) == 0
    sent = events(2500)
    for i in range(0, len(sent), 700):
        assert spool.append(sent[i : i + 700]) == len(sent[i : i + 700])
    assert spool.has_data()
    write = Collect()
    assert spool.drain(write) == 2500
    assert write.events == sent
    assert [len(c) for c in write.chunks] == [FIRST_CHUNK, FIRST_CHUNK * 10, DRAIN_CHUNK, DRAIN_CHUNK, 390]
    assert not spool.has_data() and os.path.getsize(spool.path) == 0
    assert spool.drain(Collect()) == 0


def test_chunks_are_bounded_in_bytes_too(spool):
    sent = events(300, size=20_000)  # 20 KB each: ~52 to a chunk
    spool.append(sent)
    write = Collect()
    spool.drain(write)
    assert write.events == sent
    assert max(len(msgpack.packb(list(c), use_bin_type=True)) for c in write.chunks) <= DRAIN_BYTES + 20_100


def test_failed_write_keeps_the_rest_in_order_and_the_next_drain_resumes(spool, caplog):
    sent = events(3000)
    spool.append(sent)
    size = os.path.getsize(spool.path)
    first = Collect(fail={3})  # chunks of 10 and 100 go through, then Redis fails
    with pytest.raises(ConnectionError):
        spool.drain(first)
    assert first.events == sent[:110]
    assert spool.has_data() and os.path.getsize(spool.path) == size  # nothing rewritten
    assert "wrote 110 spooled event(s) to Redis; the rest stays spooled" in caplog.text

    again = Collect(fail={2})
    with pytest.raises(ConnectionError):
        spool.drain(again)
    assert again.events == sent[110:120]  # resumed after what went through, not from the start

    rest = Collect()
    assert spool.drain(rest) == 2880
    assert first.events + again.events + rest.events == sent  # each event once, in order
    assert not spool.has_data()


def test_failed_first_write_reads_little_and_changes_nothing(spool, monkeypatch):
    fill(spool, 10_000, size=1000)  # ~10 MB
    before = Path(spool.path).read_bytes()
    stamp = os.stat(spool.path).st_mtime_ns
    reads = Reads(monkeypatch)
    with pytest.raises(ConnectionError):
        spool.drain(Collect(fail={1}))
    monkeypatch.undo()
    assert reads.bytes <= READ_SIZE  # one block, not the spool
    assert os.stat(spool.path).st_mtime_ns == stamp and Path(spool.path).read_bytes() == before
    assert not os.path.exists(spool.offset_path)


def test_append_writes_only_the_new_events_and_reads_nothing(spool, monkeypatch):
    fill(spool, 20_000, size=1000)  # ~20 MB already spooled
    size = os.path.getsize(spool.path)
    reads = Reads(monkeypatch)
    written = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: written.append(len(data)) or real_write(fd, data))
    new = events(1, start=20_000)
    assert spool.append(new) == 1
    monkeypatch.undo()
    assert reads.bytes == 0 and reads.opened == []
    record = len(msgpack.packb(list(new[0]), use_bin_type=True))
    assert written == [record] and os.path.getsize(spool.path) == size + record


def test_truncated_tail_record_is_dropped_with_a_warning(spool, caplog):
    spool.append(events(5))
    with open(spool.path, "ab") as f:
        f.write(msgpack.packb(list(events(1, start=5)[0]), use_bin_type=True)[:-3])  # cut short by a crash
    write = Collect()
    with caplog.at_level(logging.WARNING):
        assert spool.drain(write) == 5
    assert write.events == events(5)
    assert "dropped a damaged record at the end" in caplog.text
    assert not spool.has_data()
    spool.append(events(1, start=6))  # the spool is sound again
    write = Collect()
    spool.drain(write)
    assert write.events == events(1, start=6)


def test_unreadable_bytes_end_the_spool_with_a_warning(spool, caplog):
    spool.append(events(3))
    with open(spool.path, "ab") as f:
        f.write(b"\xc1\xc1\xc1")  # never valid msgpack
    spool.append(events(2, start=3))
    write = Collect()
    assert spool.drain(write) == 3
    assert write.events == events(3)
    assert "dropped a damaged record" in caplog.text
    assert not spool.has_data()


def test_records_that_are_not_tag_and_data_are_skipped(spool):
    spool.append(events(1))
    with open(spool.path, "ab") as f:
        f.write(msgpack.packb({"not": "a record"}) + msgpack.packb([1, 2, 3]))
    spool.append(events(1, start=1))
    write = Collect()
    assert spool.drain(write) == 2
    assert write.events == events(2)


def test_spool_is_bounded_by_max_bytes(tmp_path, caplog):
    record = len(msgpack.packb(list(events(1, start=1000)[0]), use_bin_type=True))  # all the same size
    spool = Spool(str(tmp_path), 100 * record + record // 2)
    assert spool.append(events(40, start=1000)) == 40
    assert spool.append(events(100, start=1040)) == 60
    assert spool.dropped == 40 and "is full" in caplog.text
    assert spool.append(events(1, start=1140)) == 0 and spool.dropped == 41
    assert os.path.getsize(spool.path) == 100 * record

    with pytest.raises(ConnectionError):  # a drain that stops half-way...
        spool.drain(Collect(fail={2}))
    assert spool.append(events(1, start=1150)) == 0  # ...frees no room: the bound is the file's size
    write = Collect()
    assert spool.drain(write) == 100 - FIRST_CHUNK
    assert write.events == events(100, start=1000)[FIRST_CHUNK:]
    assert spool.append(events(100, start=2000)) == 100  # drained to the end: the room is back


def test_crash_between_write_and_offset_update_resends_that_chunk_only(spool, monkeypatch):
    sent = events(500)
    spool.append(sent)
    real_save, saves = spool_module._Offsets.save, []

    def save(self, consumed):
        saves.append(consumed)
        if len(saves) == 2:
            raise KeyboardInterrupt  # the process dies here: chunk 2 went out, its offset did not
        real_save(self, consumed)

    monkeypatch.setattr(spool_module._Offsets, "save", save)
    first = Collect()
    with pytest.raises(KeyboardInterrupt):
        spool.drain(first)
    monkeypatch.undo()
    assert first.events == sent[:110]
    rest = Collect()
    assert spool.drain(rest) == 490
    assert rest.events == sent[10:]  # chunk 2 again (idempotent writes), chunk 1 not, nothing skipped


@pytest.mark.parametrize("damage", ["garbage", "other file"])
def test_an_offset_that_does_not_match_the_spool_is_ignored(spool, damage, caplog):
    spool.append(events(500))
    with pytest.raises(ConnectionError):
        spool.drain(Collect(fail={3}))  # 110 consumed, offset saved
    assert os.path.getsize(spool.offset_path) > 0
    if damage == "garbage":
        with open(spool.offset_path, "r+b") as f:
            f.write(b"\xff\xff")
        expected = events(500)  # all again: duplicates, never a gap
    else:  # someone deleted the spool; new events came (the inode may well be reused)
        os.remove(spool.path)
        spool.append(events(300, start=1000))
        expected = events(300, start=1000)
    write = Collect()
    spool.drain(write)
    assert write.events == expected
    assert "sending the spool from its start" in caplog.text
    spool.append(events(1, start=5000))  # and the offset was reset for the next round
    write = Collect()
    spool.drain(write)
    assert write.events == events(1, start=5000)


def test_append_from_another_process_waits_for_a_drain_and_is_kept(spool):
    spool.append(events(50))
    code = (
        "import sys; from salt_job_retry.spool import Spool; "
        "Spool(sys.argv[1], 1 << 20).append([('salt/job/00000000000000009999/ret/m', {'i': 9999, 'pad': 'x' * 20})])"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    other = []

    def write(chunk):
        if not other:
            other.append(subprocess.Popen([sys.executable, "-c", code, spool.directory], env=env))
            time.sleep(0.5)
            assert other[0].poll() is None  # blocked on the lock this drain holds

    assert spool.drain(write) == 50
    assert other[0].wait(30) == 0
    after = Collect()
    spool.drain(after)
    assert after.events == events(1, start=9999)  # appended after the truncation, not lost to it


def test_a_big_spool_drains_with_bounded_memory(spool):
    n, size = 10_000, 2000
    fill(spool, n, size=size)  # ~20 MB
    spooled = os.path.getsize(spool.path)
    seen = {"count": 0, "last": -1}

    def write(chunk):
        for _, data in chunk:
            assert data["i"] == seen["last"] + 1
            seen["last"] = data["i"]
        seen["count"] += len(chunk)

    tracemalloc.start()
    try:
        spool.drain(write)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen["count"] == n
    assert spooled > 20e6 and peak < spooled / 5, (spooled, peak)
