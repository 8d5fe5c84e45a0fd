"""
salt-job-retry benchmarks: figures and ratios against baselines measured in the same run.

Starts its own redis-server on 127.0.0.1 (a free port), runs every figure
--runs times and prints median (min-max) and the ratio to its baseline:

  ingest    returns through the real returner as the master's job cache (Salt's store_job
            calls returner() once per return; a null job cache behind it), vs (a) the
            ceiling: a bare redis-py pipeline doing the schema's key operations, (b) the
            peer: saltext-redis's returner() (its own venv, --peer-python)
  fanout    a publish targeting N minions (the job cache's save_load with the target list)
            vs a bare pipeline writing the same entries
  replay    start event -> replays handed to Salt, for a minion owed 1/100/1000 jobs, vs a
            bare pipeline reading what the replay must read
  sweep     M minions x J jobs recorded, 1 % missing: time with D and 2D jobs past timeout
            and with the total doubled, to show it follows D and not the key count
  memory    Redis used_memory per tracked (jid, minion) pair
  spool     while Redis is down, one event per call with 1 MB / 50 MB already spooled vs an
            empty spool: Spool.append alone, and the recorder's whole call (drain attempt + append)

Usage: benchmarks/run.sh [--quick]   (sets up the peer venv, then runs this)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))
sys.path.insert(0, str(REPO))

from salt_job_retry import commands, config, redis_io, store  # noqa: E402
from salt_job_retry.recorder import Recorder  # noqa: E402
from salt_job_retry.replay import EngineLoop, Replayer  # noqa: E402
from salt_job_retry.spool import SPOOL_FILE, Spool  # noqa: E402

from tests.saltlab import Lab  # noqa: E402

JID = "20261122080000000000"
STAMP = datetime.datetime.now(datetime.timezone.utc).isoformat()


def minion_ids(n: int) -> list[str]:
    return [f"minion-{i:05d}" for i in range(n)]


def new_event(jid: str, minions: list[str], stamp: str = STAMP) -> dict:
    data = {"jid": jid, "fun": "state.apply", "arg": [], "tgt": "*", "tgt_type": "glob", "user": "root"}
    return {"tag": f"salt/job/{jid}/new", "data": {**data, "minions": minions, "_stamp": stamp}}


def ret_event(jid: str, minion: str) -> dict:
    data = {"cmd": "_return", "id": minion, "jid": jid, "fun": "state.apply", "return": "hi", "retcode": 0}
    return {"tag": f"salt/job/{jid}/ret/{minion}", "data": {**data, "success": True}}


class NullJobCache(dict):
    """Salt's job cache behind ours: every function does nothing."""

    def __missing__(self, key: str):
        return lambda *args, **kwargs: None


class Bench:
    def __init__(self, port: int, runs: int, spool_dir: str):
        self.port = port
        self.runs = runs
        self.spool_dir = spool_dir
        raw = {"enabled": True, "redis_url": f"redis://127.0.0.1:{port}/0", "max_replays_per_second": 1e9}
        self.conf = config.load(raw)
        self.client = redis_io.connect(self.conf)
        self.store = store.Store(self.client, self.conf)
        self.keys = self.store.keys
        self.returner = self._load_returner()
        self.rows: list[str] = []

    def _load_returner(self):
        """The real returner module, with the dunders Salt's loader would give it."""
        spec = importlib.util.spec_from_file_location("jr_returner", REPO / "_returners" / "job_retry.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        raw = {"enabled": True, "redis_url": self.conf.redis_url, "spool_dir": self.spool_dir}
        module.__opts__ = {"job_retry": raw, "cachedir": self.spool_dir, "__role": "master", "id": "bench"}
        module.__salt__ = {}
        # the master_job_cache behind ours does nothing here: only our own cost is measured
        module.__context__ = {"job_retry.job_cache": ("local_cache", NullJobCache())}
        return module

    def publish(self, event: dict) -> None:
        """What Salt's publish path does with a job: the job cache's save_load with the target list."""
        data = event["data"]
        self.returner.save_load(data["jid"], data, data["minions"])

    def stored(self, event: dict) -> None:
        """What Salt's store_job does with a minion's return: the job cache's returner()."""
        self.returner.returner(event["data"])

    def record(self, events: list[dict]) -> None:
        """Many publishes and returns in one Recorder call (the spool drain's path)."""
        self.returner._recorder().record(events, trusted=True)

    def flush(self) -> None:
        """Empty Redis between runs: ASYNC (a multi-GB FLUSHALL outlasts the socket timeout), then wait."""
        self.client.flushall(asynchronous=True)
        while self.client.info("memory").get("lazyfree_pending_objects", 0):
            time.sleep(0.05)

    # -- measuring -------------------------------------------------------------------------

    def measure(self, setup, action) -> list[float]:
        """Seconds of `action` over self.runs runs, each after `setup` (untimed)."""
        return self.measure_pair(setup, action, None)[0]

    def measure_pair(self, setup, action, baseline) -> tuple[list[float], list[float]]:
        """
        `action` and `baseline` alternately, run by run, so both see the same machine: this
        VM's speed drifts 2-3x over minutes, which would swamp ratios of separate series.
        """
        ours, base = [], []
        for _ in range(self.runs):
            for fn, out in ((action, ours), (baseline, base)):
                if fn is None:
                    continue
                self.flush()
                state = setup()
                began = time.perf_counter()
                fn(state)
                out.append(time.perf_counter() - began)
        return ours, base

    def report(
        self,
        figure: str,
        ours: list[float],
        base: list[float] | None,
        base_name: str,
        unit: str,
        scale: float,
        target: str = "",
        higher_is_better: bool = False,
    ) -> float:
        """Print one figure; values are `scale / seconds` (rates) or `seconds * scale` (times)."""
        conv = (lambda t: scale / t) if higher_is_better else (lambda t: t * scale)
        vals = sorted(conv(t) for t in ours)
        line = f"{figure:<34} {fmt(vals)} {unit}"
        ratio = 0.0
        if base:
            bvals = sorted(conv(t) for t in base)
            pairs = [conv(a) / conv(b) for a, b in zip(ours, base, strict=False)]  # run by run
            ratio = statistics.median(pairs)
            line += f"   {base_name}: {fmt(bvals)} {unit}   ratio {ratio:.2f}x"
        if target:
            line += f"   (target {target})"
        self.emit(line)
        return ratio

    def emit(self, line: str) -> None:
        """Print one figure line and keep it for the summary."""
        print(line, flush=True)
        self.rows.append(line)

    # -- 1. ingest -----------------------------------------------------------------------

    def ingest(self, returns: int, peer_python: str | None) -> None:
        minions = minion_ids(returns)
        events = [ret_event(JID, m) for m in minions]

        def setup():
            self.publish(new_event(JID, minions))

        def ours_single(_):
            for event in events:
                self.stored(event)

        def ours_batch(_):
            for i in range(0, len(events), 100):
                self.record(events[i : i + 100])

        returned, ttl = self.keys.returned(JID), self.conf.ttl

        def ceiling(batch):
            def run(_):
                for i in range(0, len(minions), batch):
                    pipe = self.client.pipeline(transaction=False)
                    for m in minions[i : i + batch]:
                        pipe.sadd(returned, m)
                        pipe.expire(returned, ttl)
                    pipe.execute()

            return run

        def round_trips(_):  # the floor of any one-call-one-reply write: a PING per return
            for _m in minions:
                self.client.execute_command("PING")

        single, ceil1 = self.measure_pair(setup, ours_single, ceiling(1))
        single_rt, floor = self.measure_pair(setup, ours_single, round_trips)
        batched, ceil100 = self.measure_pair(setup, ours_batch, ceiling(100))
        peer, single_p, batched_p = None, single, batched
        if peer_python:
            peer, single_p, batched_p = [], [], []
            for _ in range(self.runs):  # interleaved with ours, run by run
                peer += self.peer(peer_python, returns, runs=1)
                single_p += self.measure_once(setup, ours_single)
                batched_p += self.measure_once(setup, ours_batch)
        n = float(returns)
        self.report("ingest, 1 return per call", single, ceil1, "bare pipeline", "returns/s", n, "", True)
        self.report("ingest, 1 return per call", single_rt, floor, "one PING round trip", "returns/s", n, "", True)
        self.report("ingest, 100 per Recorder call", batched, ceil100, "bare pipeline", "returns/s", n, ">= 0.8x", True)
        if peer:
            self.report(
                "ingest, 1 return per call", single, peer, "saltext-redis returner()", "returns/s", n, ">= 2x", True
            )
            self.report(
                "ingest, 100 per Recorder call",
                batched,
                peer,
                "saltext-redis returner()",
                "returns/s",
                n,
                ">= 10x",
                True,
            )

    def measure_once(self, setup, action) -> list[float]:
        runs, self.runs = self.runs, 1
        try:
            return self.measure(setup, action)
        finally:
            self.runs = runs

    def peer(self, python: str, returns: int, runs: int) -> list[float]:
        times = []
        for _ in range(runs):
            self.flush()
            out = subprocess.run(
                [
                    python,
                    str(REPO / "benchmarks" / "peer_returner.py"),
                    "--port",
                    str(self.port),
                    "--returns",
                    str(returns),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            times.append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
        return times

    # -- 2. fan-out ----------------------------------------------------------------------

    def fanout(self, sizes: list[int], events_per_run: int) -> None:
        for n in sizes:
            minions = minion_ids(n)
            reps = max(3, events_per_run // n)
            events = [new_event(f"2026112208{i:010d}", minions) for i in range(reps)]

            def ours(_, events=events):
                for event in events:
                    self.publish(event)

            blob = redis_io.pack(
                {"fun": "state.apply", "arg": [], "tgt": "*", "tgt_type": "glob", "user": "root", "time": time.time()}
            )

            def bare(_, events=events, blob=blob, minions=minions):
                for event in events:
                    jid = event["data"]["jid"]
                    pipe = self.client.pipeline(transaction=False)
                    pipe.set(self.keys.job(jid), blob, nx=True, ex=self.conf.ttl)
                    pipe.sadd(self.keys.targets(jid), *minions)
                    pipe.expire(self.keys.targets(jid), self.conf.ttl)
                    pipe.zadd(self.keys.unswept, {jid: time.time()}, nx=True)
                    pipe.expire(self.keys.unswept, self.conf.ttl)
                    pipe.execute()

            self.measure(lambda: None, ours)  # warm the script cache
            a, b = self.measure_pair(lambda: None, ours, bare)
            self.report(f"fan-out, new event to {n} minions", a, b, "bare pipeline", "ms/event", 1000 / reps, "<= 1.2x")

    # -- 3. replay latency ---------------------------------------------------------------

    def replay(self, owed_counts: list[int]) -> None:
        handed = []
        conf = dataclasses.replace(self.conf, supersede_functions=())  # 100 distinct jobs, not one superseding
        replayer = Replayer(
            store.Store(self.client, conf),
            conf,
            lambda m, j, job, a, e=None: handed.append(j),
            lambda d, t: None,
            engine="bench",
        )
        recorder = Recorder(self.store, self.conf, Spool(self.spool_dir, 1 << 20))
        old = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).isoformat()
        for owed in owed_counts:
            jids = [f"2026112207{i:010d}" for i in range(owed)]

            def setup(jids=jids):
                recorder.record([new_event(j, ["web3", "web4"], old) for j in jids], trusted=True)
                self.store.sweep()
                return int(time.time() * 1000)

            def ours(started_ms):
                # A start, then the first replay out: one job at a time, so the first is the latency.
                handed.clear()
                self.store.note_starts("bench", {"web3": (started_ms, str(started_ms))})
                replayer.step("web3")
                assert len(handed) == 1, handed

            def bare(_):
                pipe = self.client.pipeline(transaction=False)
                pipe.zrange(self.keys.queue("web3"), 0, -1)
                pipe.zrange(self.keys.unswept, 0, -1)
                queued = pipe.execute()[0]
                pipe = self.client.pipeline(transaction=False)
                for jid in queued:
                    pipe.get(self.keys.job(jid.decode()))
                    pipe.sismember(self.keys.returned(jid.decode()), "web3")
                pipe.execute()

            a = self.measure(setup, ours)
            b = self.measure(setup, bare)
            self.report(
                f"start to first replay, {owed} owed job(s)",
                a,
                b,
                "bare reads",
                "ms",
                1000,
                "<= 50 ms" if owed == 100 else "",
            )

    # -- 4. sweep ------------------------------------------------------------------------

    def sweep(self, minions: int, jobs: int, due: int) -> None:
        ids = minion_ids(minions)
        missing = ids[: max(1, minions // 100)]

        def setup_for(total: int, due_jobs: int):
            def setup():
                now = time.time()  # per run: a setup takes long enough to age a fixed `now`
                pipe = self.client.pipeline(transaction=False)
                for i in range(total):
                    jid = f"2026112206{i:010d}"
                    published = now - 3600 if i < due_jobs else now + 3600  # the rest: not due yet
                    pipe.set(self.keys.job(jid), redis_io.pack({"fun": "state.apply", "arg": [], "time": published}))
                    pipe.sadd(self.keys.targets(jid), *ids)
                    pipe.sadd(self.keys.returned(jid), *ids[len(missing) :])
                    pipe.zadd(self.keys.unswept, {jid: published})
                    if i % 20 == 19:
                        pipe.execute()
                pipe.execute()

            return setup

        def run(_):
            self.store.sweep()

        runs, self.runs = self.runs, min(self.runs, 3)  # each setup writes millions of set members
        base = self.measure(setup_for(jobs, due), run)
        doubled_due = self.measure(setup_for(jobs, 2 * due), run)
        doubled_total = self.measure(setup_for(2 * jobs, due), run)
        self.runs = runs
        label = f"{minions} minions x {jobs} jobs, 1 % missing"
        self.report(f"sweep, {due} due ({label})", base, None, "", "ms", 1000)
        self.report(f"sweep, {2 * due} due", doubled_due, base, f"{due} due", "ms", 1000, "~2x: follows due jobs")
        self.report(
            f"sweep, {due} due, {2 * jobs} jobs stored",
            doubled_total,
            base,
            f"{jobs} stored",
            "ms",
            1000,
            "~1x: not the key count",
        )

    # -- 5. memory -----------------------------------------------------------------------

    def memory(self, minions: int, jobs: int) -> None:
        ids = minion_ids(minions)
        for label, returned in (("after publish", False), ("after every return", True)):
            self.flush()
            before = self.client.info("memory")["used_memory"]
            for i in range(jobs):
                jid = f"2026112205{i:010d}"
                self.record([new_event(jid, ids)])
                if returned:
                    for j in range(0, minions, 1000):
                        self.record([ret_event(jid, m) for m in ids[j : j + 1000]])
            used = self.client.info("memory")["used_memory"] - before
            per_pair = used / (minions * jobs)
            line = f"memory {label:<19} {per_pair:8.1f} bytes/(jid, minion)   ({jobs} jobs x {minions} minions)"
            line += "   (target <= 120)"
            self.emit(line)

    # -- 6. spool ------------------------------------------------------------------------

    def spool(self, sizes_mb: list[int], calls: int) -> None:
        """
        While Redis is down, one event per call with `size` MB already spooled vs an empty spool,
        alternately run by run: Spool.append alone, and Recorder.record (what the returner runs:
        an attempt to drain the spool, then the append) against a port that refuses connections.
        Neither should depend on how much is spooled.
        """
        tag, data = ret_event(JID, "minion-00000").values()
        record = msgpack.packb([tag, data], use_bin_type=True)
        with socket.socket() as sock:  # a port nobody listens on: Redis is down
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        down = config.load({"enabled": True, "redis_url": f"redis://127.0.0.1:{port}/0"})
        down_store = store.Store(redis_io.connect(down), down)

        def spool_of(size_mb: int, recorder: bool):
            """A spool holding `size_mb` MB of ret events (restored to that size for each run)."""
            directory = os.path.join(self.spool_dir, f"spool-bench-{size_mb}mb")
            os.makedirs(directory, exist_ok=True)
            path, prefill = os.path.join(directory, SPOOL_FILE), size_mb * 2**20 // len(record) * len(record)
            if not os.path.exists(path) or os.path.getsize(path) < prefill:
                with open(path, "wb") as spooled:
                    spooled.write(record * (prefill // len(record)))
            with open(path, "r+b") as spooled:
                spooled.truncate(prefill)  # drop what the last run appended
                os.fsync(spooled.fileno())  # else the first timed fsync writes the prefill out
            spool = Spool(directory, down.spool_max_bytes)
            return Recorder(down_store, down, spool) if recorder else spool

        def append(state):
            for _ in range(calls):
                state[0].append([(tag, data)])

        def record_call(state):
            for _ in range(calls):
                state[0].record([{"tag": tag, "data": data}], trusted=True)

        quiet = logging.getLogger("salt_job_retry")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the recorder's "spooled N event(s)" warnings
        try:
            for name, action, recorder in (("spool append", append, False), ("record, Redis down", record_call, True)):
                for size_mb in sizes_mb:

                    def setup(size_mb=size_mb, recorder=recorder):
                        return spool_of(size_mb, recorder), spool_of(0, recorder)

                    ours, base = self.measure_pair(setup, action, lambda state, action=action: action(state[1:]))
                    self.report(
                        f"{name}, {size_mb} MB spooled",
                        ours,
                        base,
                        "empty spool",
                        "ms/call",
                        1000 / calls,
                        "~1x: not the spool size",
                    )
        finally:
            quiet.setLevel(level)


def commands_processed(client) -> int:
    return int(client.info("stats")["total_commands_processed"])


class EngineBench:
    """Figures of the engine loop in this process: what unrelated bus traffic and a backlog cost."""

    def __init__(self, bench: Bench):
        self.bench = bench

    def idle_under_traffic(self, events: int) -> None:
        """The engine loop fed `events` unrelated bus events (other jobs' returns, new jobs, auth)."""
        b = self.bench
        unrelated = []
        for i in range(events):
            jid = f"2026112209{i:010d}"
            kind = i % 3
            if kind == 0:
                unrelated.append({"tag": f"salt/job/{jid}/ret/web{i % 500}", "data": {"id": f"web{i % 500}"}})
            elif kind == 1:
                unrelated.append({"tag": f"salt/job/{jid}/new", "data": {"jid": jid, "minions": ["web1"]}})
            else:
                unrelated.append({"tag": "salt/auth", "data": {"id": f"web{i % 500}", "act": "accept"}})
        replayer = Replayer(b.store, b.conf, lambda *a: None, lambda *a: None, engine="bench")

        def run_loop(feed_fn):
            remaining = list(unrelated)
            loop = EngineLoop(replayer, lambda wait: remaining.pop() if remaining else None, 10.0, sleep=lambda s: None)
            loop.step()  # first pass: rewind, heartbeat, sweep
            commands = commands_processed(b.client)
            cpu = time.process_time()
            began = time.perf_counter()
            while remaining:
                feed_fn(loop)
            return time.process_time() - cpu, time.perf_counter() - began, commands_processed(b.client) - commands - 1

        cpu, wall, commands = run_loop(lambda loop: loop.step())
        bare_cpu, _, _ = run_loop(lambda loop: loop.handle(*(lambda e: (e["tag"], e["data"]))(loop.next_event(0))))
        per_event = cpu / events * 1e6
        line = (
            f"{'engine, ' + num(events) + ' unrelated events':<34} {per_event:.1f} us CPU/event, "
            f"{commands} Redis commands in {wall:.2f} s ({commands / wall:.1f}/s)   "
            f"bare event sort: {bare_cpu / events * 1e6:.1f} us/event   ratio {cpu / bare_cpu:.2f}x   "
            f"(target: Redis commands follow time, not events)"
        )
        b.emit(line)

    def backlog_under_rate_limit(self, jobs: int, rate: float) -> None:
        """One minion owed `jobs` jobs, each returning at once, drained through the token bucket."""
        b = self.bench
        # every job distinct for this figure: supersede would replay only the newest
        conf = dataclasses.replace(b.conf, max_replays_per_second=rate, timeout=1, supersede_functions=())
        st = store.Store(b.client, conf)
        recorder = Recorder(st, conf, Spool(b.spool_dir, conf.spool_max_bytes))
        b.flush()
        published = time.time() - 60
        stamp = datetime.datetime.fromtimestamp(published, datetime.timezone.utc).isoformat()
        recorder.record([new_event(f"20261122100{i:09d}", ["web1"], stamp) for i in range(jobs)], trusted=True)
        st.sweep()
        sent: list[str] = []

        def publish(minion, jid, job, attempt, extra=None):
            sent.append(jid)
            recorder.record([ret_event(jid, minion)], trusted=True)  # the minion answers at once

        replayer = Replayer(st, conf, publish, lambda *a: None, engine="bench")
        st.note_starts("bench", {"web1": (int(time.time() * 1000), "4242")})
        commands = commands_processed(b.client)
        began = time.perf_counter()
        while len(sent) < jobs:
            step = replayer.step("web1")
            if step.due_ms is None:
                raise RuntimeError(f"backlog stopped after {len(sent)} of {jobs} replays: {step}")
            if not step.published:
                time.sleep(max(0.0, step.due_ms / 1000 - st.now()))
        wall = time.perf_counter() - began
        commands = commands_processed(b.client) - commands
        ideal = jobs / rate
        line = (
            f"{num(jobs) + ' owed to one minion at ' + num(rate) + '/s':<34} drained in {wall:.2f} s, "
            f"{commands / jobs:.1f} Redis commands per job (Lua-internal included)   "
            f"ideal {jobs}/{num(rate)}: {ideal:.2f} s   "
            f"ratio {wall / ideal:.2f}x   (target ~1x, O(jobs) commands)"
        )
        b.emit(line)


def start_event(minion: str, pid: int, stamp: str) -> dict:
    return {"tag": f"salt/minion/{minion}/start", "data": {"id": minion, "grains": {"pid": pid}, "_stamp": stamp}}


def restart(bench: Bench, minions: int, jobs: int) -> None:
    """
    A master restart: `minions` minions, down for `jobs` jobs not swept yet (each to all of them),
    all start at once. Time until every minion has its first replay out, and Redis commands spent.
    """
    conf = dataclasses.replace(bench.conf, timeout=3600, supersede_functions=(), max_replays_per_second=1e9)
    st = store.Store(bench.client, conf)
    ids = minion_ids(minions)
    recorder = Recorder(st, conf, Spool(bench.spool_dir, conf.spool_max_bytes))
    before = datetime.datetime.fromtimestamp(time.time() - 10, datetime.timezone.utc).isoformat()
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()

    def setup():
        for i in range(jobs):
            recorder.record([new_event(f"20261122110{i:09d}", ids, before)], trusted=True)
        return [start_event(m, 1000 + n, now) for n, m in enumerate(ids)]

    def ours(events):
        out: set[str] = set()
        replayer = Replayer(st, conf, lambda m, *a: out.add(m), lambda *a: None, engine="bench")
        loop = EngineLoop(replayer, lambda wait: events.pop() if events else None, 60.0, sleep=lambda s: None)
        deadline = time.monotonic() + 600
        while len(out) < minions and time.monotonic() < deadline:
            loop.step()
        assert len(out) == minions, f"{len(out)} of {minions} minions got their first replay"

    def bare(_):
        # the least work: which unswept jobs target each minion, index them, read each minion's first job
        jids = [f"20261122110{i:09d}" for i in range(jobs)]
        pipe = bench.client.pipeline(transaction=False)
        for jid in jids:
            pipe.smismember(bench.keys.targets(jid), ids)
        flags = pipe.execute()
        pipe = bench.client.pipeline(transaction=False)
        for jid, row in zip(jids, flags, strict=True):
            for m, hit in zip(ids, row, strict=True):
                if hit:
                    pipe.zadd(bench.keys.queue(m), {jid: 1}, nx=True)
        pipe.execute()
        pipe = bench.client.pipeline(transaction=False)
        for _ in ids:
            pipe.get(bench.keys.job(jids[0]))
        pipe.execute()

    counts = []

    def counted(fn):
        def run(state):
            before_cmds = commands_processed(bench.client)
            fn(state)
            counts.append(commands_processed(bench.client) - before_cmds)

        return run

    a, b = bench.measure_pair(setup, counted(ours), counted(bare))
    bench.report(
        f"restart, {minions:,} minions x {jobs:,} unswept",
        a,
        b,
        "bare index + first read",
        "s to every first replay",
        1.0,
    )
    ours_cmds, bare_cmds = counts[0::2], counts[1::2]
    line = (
        f"{'  Redis commands (Lua-internal incl.)':<34} {statistics.median(ours_cmds):,.0f}   "
        f"bare: {statistics.median(bare_cmds):,.0f}   per minion: {statistics.median(ours_cmds) / minions:.1f}"
    )
    bench.emit(line)


def unrelated_work(bench: Bench, sizes: tuple[int, int], minions: int) -> None:
    """
    What one start and a `flush <glob>` with nothing to flush cost in Redis commands while
    N unswept jobs target other minions (each job one other minion), at two sizes N: the
    ratio shows whether the cost follows the unrelated work (issue 16, item 5).
    """
    conf = dataclasses.replace(bench.conf, timeout=3600)
    st = store.Store(bench.client, conf)
    recorder = Recorder(st, conf, Spool(bench.spool_dir, conf.spool_max_bytes))
    env = commands.Env({"sock_dir": "/nonexistent"}, conf, st)
    ids = [f"web-{i:05d}" for i in range(minions)]  # the flush's glob matches every one of them
    env.known_minions = lambda: set(ids)
    figures = {}
    for n in sizes:
        bench.flush()
        others = [f"other-{i:05d}" for i in range(n)]
        recorder.record([new_event(f"2026112212{i:010d}", [others[i]]) for i in range(n)], trusted=True)
        recorder.record([new_event("20261122130000000001", ["web-00001"])], trusted=True)  # one it is owed
        before = commands_processed(bench.client)
        st.note_starts("bench-engine", {"web-00001": (int(time.time() * 1000), "7")})
        start = commands_processed(bench.client) - before - 1
        before = commands_processed(bench.client)
        out = commands.flush(env, "web-*", dry_run=True)
        flush = commands_processed(bench.client) - before - 1
        assert out["minions"] == {"web-00001": ["20261122130000000001"]}, out
        figures[n] = (start, flush)
        bench.emit(
            f"{f'unrelated unswept jobs: {n:,}':<34} start: {start} Redis commands   "
            f"flush web-* ({minions} minions, dry run): {flush:,} commands"
        )
    small, large = sizes
    bench.emit(
        f"{f'  {large:,} vs {small:,} unrelated':<34} start {figures[large][0] / figures[small][0]:.2f}x   "
        f"flush {figures[large][1] / figures[small][1]:.2f}x   (target <= 2x: the cost follows what is owed)"
    )


def fmt(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{num(med)} ({num(min(values))}-{num(max(values))})"


def num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and 2 runs (CI)")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--peer-python", default=None, help="python of a venv with saltext.redis")
    parser.add_argument("--only", default="ingest,fanout,replay,sweep,memory,spool,engine,restart,unrelated")
    args = parser.parse_args()
    quick = args.quick
    runs = args.runs or (2 if quick else 5)
    only = set(args.only.split(","))

    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    parser_name = "hiredis" if importlib.util.find_spec("hiredis") else "pure-Python parser"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"redis-server {redis_version.removeprefix('v=')}, redis-py {redis.__version__} ({parser_name})"
    )
    lab = Lab(minions=())
    lab.start_redis()
    try:
        with tempfile.TemporaryDirectory() as spool:
            bench = Bench(lab.redis_port, runs, spool)
            print(f"redis-server on 127.0.0.1:{lab.redis_port}; {runs} runs per figure; median (min-max)\n")
            if "ingest" in only:
                bench.ingest(2000 if quick else 20000, args.peer_python)
            if "fanout" in only:
                bench.fanout([100, 1000] if quick else [100, 1000, 10000], 20000 if quick else 100000)
            if "replay" in only:
                bench.replay([1, 100] if quick else [1, 100, 1000])
            if "sweep" in only:
                if quick:
                    bench.sweep(1000, 100, 10)
                else:
                    bench.sweep(10000, 1000, 50)
            if "memory" in only:
                bench.memory(1000 if quick else 10000, 5 if quick else 20)
            if "spool" in only:
                bench.spool([1, 10] if quick else [1, 50], 200 if quick else 500)
            if "engine" in only:
                engine = EngineBench(bench)
                engine.idle_under_traffic(10000 if quick else 100000)
                engine.backlog_under_rate_limit(200 if quick else 1000, 50)
            if "restart" in only:
                restart(bench, 1000 if quick else 10000, 50 if quick else 500)
            if "unrelated" in only:
                unrelated_work(bench, (50, 500), 100)
    finally:
        lab.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
