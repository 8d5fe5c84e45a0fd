"""
Every read and write of salt-job-retry's state in Redis, for the three loader modules.

The schema (key names, types, TTLs) is in ``keys``; the Lua scripts, one module each, in
``lua``; the client, batches and errors in ``redis_io``. The per-job keys are the truth;
the job index, ``queues`` and the per-minion queues are indexes that may briefly hold
stale entries, which readers drop.
"""

from __future__ import annotations

import calendar
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis

from .config import Config
from .keys import SWEPT, Keys, bucket_of
from .redis_io import Batch, guard, pack, unpack
from .redis_io import text as _text

log = logging.getLogger(__name__)


@dataclass
class Claim:
    jid: str
    state: str  # claimed | exhausted | interrupted | done | sent | after | (see lua/pair.py)
    attempt: int = 0
    job: dict | None = None
    kind: str = ""  # for claimed: "attempt" (a replay) or "refusal" (again after a refusal)
    pub_jid: str = ""  # for claimed: the jid to publish under


@dataclass
class SeqView:
    """A minion's replay sequence as one engine holds it (times in Redis-clock ms)."""

    now_ms: int
    proc: str  # the minion process being served ('' until known)
    started_ms: int  # when that process last connected
    cur: str  # the replay in flight ('' when none)
    wait_ms: int  # how long to wait for cur's return
    acks: bool  # the minion has acknowledged replays before (Salt 3008 start events)
    pend_ms: int  # stamp of a (re)connection whose process is not identified yet (0: none)
    queue: list[tuple[str, float]]  # (jid, published epoch s), oldest first
    born_ms: int = 0  # when that process first connected
    pub: str = ""  # the jid the in-flight replay went out under ('' if its engine died before publishing)
    engine: str = ""  # the engine holding it
    via: str = ""  # the engine of the process's newest connection ('' unknown)
    via_ms: int = 0  # when that connection was seen


@dataclass
class Look:
    """Where one queued job stands for the current process (see lua/pair.py)."""

    jid: str
    published: float
    state: str
    attempts: int = 0
    acked: bool = False
    job: dict | None = None
    sent_ms: int = 0
    refusals: int = 0
    final: str = ""


class Store:
    """Every read and write of job_retry state. Loader modules call only this."""

    CLOCK_EVERY = 60.0  # seconds between measurements of Redis' clock against ours

    def __init__(
        self,
        client: redis.Redis,
        conf: Config,
        clock: Callable[[], float] = time.time,
        redis_clock: bool | None = None,
    ):
        self.client = client
        self.conf = conf
        self.keys = Keys(conf.key_prefix)
        self.clock = clock
        # Every stored time is on Redis' clock, so masters whose clocks disagree still
        # agree: scripts read TIME, and times from Salt events (stamped by a master) are
        # shifted by `skew`, Redis' clock minus this host's. Off with an injected test clock.
        self.redis_clock = clock is time.time if redis_clock is None else redis_clock
        self.skew = 0.0
        self.clock_read_at: float | None = None  # time.monotonic() of the last measurement
        self.held_by = ""  # after take() answered None: the engine holding the sequence

    # -- one clock ------------------------------------------------------------------

    def now(self) -> float:
        """Now on Redis' clock (epoch seconds)."""
        self.ensure_clock()
        return self.clock() + self.skew

    def aligned(self, local: float) -> float:
        """A time read off this host's clock (a Salt event's stamp), on Redis' clock."""
        return local + self.skew

    def ensure_clock(self) -> None:
        """Measure the skew if it never was (one round trip, once per process)."""
        if self.redis_clock and self.clock_read_at is None:
            self.measure_clock()

    def measure_clock(self) -> None:
        """Measure the skew now (one round trip)."""
        before = self.clock()
        (reply,) = self.run(lambda b: b.call("TIME"))
        self._note_clock(reply, before, self.clock())

    def clock_due(self) -> bool:
        return self.redis_clock and (
            self.clock_read_at is None or time.monotonic() - self.clock_read_at > self.CLOCK_EVERY
        )

    def stage_clock(self, batch: Batch) -> int | None:
        """Measure the skew again with a batch about to go anyway (no extra round trip)."""
        return batch.call("TIME") if self.clock_due() else None

    def note_clock(self, results: list[Any], index: int | None, before: float, after: float) -> None:
        if index is not None:
            self._note_clock(results[index], before, after)

    def _note_clock(self, reply: Any, before: float, after: float) -> None:
        seconds, micros = (int(x) for x in reply)
        self.skew = seconds + micros / 1e6 - (before + after) / 2
        self.clock_read_at = time.monotonic()
        if abs(self.skew) > 1:
            log.warning("job_retry: this host's clock is %.1f s off Redis'; times are kept on Redis' clock", -self.skew)

    # -- plumbing -----------------------------------------------------------------

    def batch(self) -> Batch:
        return Batch(self.client)

    def run(self, fill: Callable[[Batch], Any]) -> list[Any]:
        """Fill a batch and execute it, turning connection failures into RedisUnavailable."""
        batch = self.batch()
        fill(batch)
        return guard(self.conf, batch.execute)

    # -- recording (returner) -------------------------------------------------------

    def stage_job(
        self, batch: Batch, jid: str, blob: bytes, published: float, minions: Iterable[str], mask: int | None = None
    ) -> int:
        """
        Record a published job (packed) and merge its targets (a replay's `new` names one minion).
        Returns the batch index whose result is 0 if jid is a replay's or a retry's fresh jid.
        `mask`: the buckets of its targets (keys.mask_of); None for a replay's `new`.
        """
        k, ttl = self.keys, self.conf.ttl
        if minions:
            batch.call("SADD", k.targets(jid), *minions)
            batch.call("EXPIRE", k.targets(jid), ttl)
        index = batch.script("record_new", [k.job(jid), k.alias(jid), k.returned(jid), k.retry(jid)], [ttl, blob])
        batch.call("ZADD", k.unswept, "NX", published, jid)
        if mask is not None:
            batch.call("HSETNX", k.masks, jid, mask)
        return index

    def stage_index_ttl(self, batch: Batch) -> None:
        """Renew the job indexes' TTL: once per batch that added jobs (not once per job)."""
        k, ttl = self.keys, self.conf.ttl
        batch.call("EXPIRE", k.unswept, ttl)
        batch.call("EXPIRE", k.masks, ttl)

    def forget_aliases(self, jids: list[str]) -> None:
        """A fresh jid is a copy of its original, not a job: out of the job indexes."""
        if jids:
            self.run(lambda b: b.call("ZREM", self.keys.unswept, *jids))

    def stage_excluded_job(self, batch: Batch, jid: str, job: dict) -> None:
        """Remember only that the jid ran an excluded function, so `status` can say so."""
        self.stage_unrecorded_job(batch, jid, {**job, "excluded": True})

    def stage_unrecorded_job(self, batch: Batch, jid: str, job: dict) -> None:
        """Remember a job that is not tracked (excluded, too large) and why, without targets."""
        batch.call("SET", self.keys.job(jid), pack(job), "NX", "EX", self.conf.ttl)

    def stage_return(self, batch: Batch, jid: str, minion: str) -> None:
        # One command on the hot path: the minion's queue entry, if any, is dropped lazily
        # (pending() and claims skip and remove entries whose minion returned).
        k = self.keys
        batch.script("record_return", [k.targets(jid), k.returned(jid)], [self.conf.ttl, minion])

    def register_alias(self, new_jid: str, orig_jid: str) -> None:
        """Mark a fresh jid (from `retry`) as a copy of orig_jid, before it is published."""
        self.run(lambda b: b.call("SET", self.keys.alias(new_jid), orig_jid, "EX", self.conf.ttl))

    # -- sweep ----------------------------------------------------------------------

    def sweep(self, limit: int = 500, progress: Callable[[int], None] | None = None) -> list[tuple[str, str, dict]]:
        """
        Queue the missing minions of every job published more than `timeout` ago.

        Returns the newly queued (jid, minion, job). Cost grows with the jobs that
        came due, not with everything stored: only `unswept` is read.
        """
        queued: list[tuple[str, str, dict]] = []
        while True:
            now = self.now()
            cutoff = now - self.conf.timeout
            jids = [
                _text(j)
                for j in guard(self.conf, self.client.zrangebyscore, self.keys.unswept, "-inf", cutoff, 0, limit)
            ]
            if not jids:
                return queued
            queued.extend(self._sweep_jobs(jids, now))
            if progress:
                progress(len(jids))
            if len(jids) < limit:
                return queued

    def _sweep_jobs(self, jids: list[str], now: float) -> list[tuple[str, str, dict]]:
        k, ttl = self.keys, self.conf.ttl

        def fill(b: Batch) -> None:
            for jid in jids:
                b.script("sweep_job", [k.targets(jid), k.returned(jid), k.retry(jid), k.job(jid)], [ttl, repr(now)])
                b.call("GET", k.job(jid))

        results = self.run(fill)
        owed: list[tuple[str, str, bool, dict]] = []
        published: dict[str, float] = {}
        for i, jid in enumerate(jids):
            pairs, blob = results[2 * i], results[2 * i + 1]
            job = unpack(blob) if blob else {}
            if job:
                published[jid] = float(job.get("time", now))
            owed.extend((jid, _text(pairs[j]), pairs[j + 1] == 1, job) for j in range(0, len(pairs), 2))

        def enqueue(b: Batch) -> None:
            for minion in {minion for _, minion, _, _ in owed}:
                # entries of expired jobs: a minion that is up but slow is queued for each job it
                # is late with and nobody may read its queue; this keeps it within ttl's worth
                b.call("ZREMRANGEBYSCORE", k.queue(minion), "-inf", now - ttl)
            self._stage_queue(b, [(minion, jid, job.get("time", now)) for jid, minion, _, job in owed], now)
            # Swept jobs stay in the index with a score past every cutoff: the `new` of a replay
            # under the original jid (ZADD NX) then leaves it swept instead of queueing it again.
            gone = [jid for jid in jids if jid not in published]
            if gone:
                b.call("ZREM", k.unswept, *gone)
            for jid, at in published.items():
                b.call("ZADD", k.unswept, "XX", SWEPT + at, jid)
            b.call("HDEL", k.masks, *jids)  # swept: a start or a flush finds it in the minion's queue
            b.call("ZREMRANGEBYSCORE", k.unswept, SWEPT, SWEPT + now - ttl)  # their keys have expired
            fresh = sum(1 for _, _, new, _ in owed if new)
            if fresh:
                b.call("HINCRBY", k.stats, "queued", fresh)
                b.call("EXPIRE", k.stats, ttl)

        self.run(enqueue)
        # A connected minion's start may have been served before these were known (the returner
        # was behind, or a refusal came later): its engine looks again.
        self.wake([minion for _, minion, new, _ in owed if new], None)
        return [(jid, minion, job) for jid, minion, new, job in owed if new]

    # -- replay sequence (engine) --------------------------------------------------------

    def now_arg(self) -> str:
        """'' lets the scripts read Redis' clock; an injected test clock is passed instead."""
        return "" if self.redis_clock else str(int(self.clock() * 1000))

    def owed_candidates(self, minions: list[str]) -> dict[str, list[str]]:
        """
        Jids that may be owed to each minion: the not-yet-swept jobs that target it (one
        SMISMEMBER per job whose mask has its bucket, for all the minions at once), then its queue
        (read second: a sweep in between moves a job from the first to the second, never out).
        """
        k = self.keys
        unswept = self.unswept_targeting(minions)
        queues = self.run(lambda b: [b.call("ZRANGE", k.queue(m), 0, -1) for m in minions]) if minions else []
        found = {m: [_text(j) for j in q] for m, q in zip(minions, queues, strict=True)}
        for m, jid, _ in unswept:
            if jid not in found[m]:
                found[m].append(jid)
        return found

    def unswept_targeting(self, minions: list[str]) -> list[tuple[str, str, float]]:
        """(minion, jid, published) of the not-yet-swept jobs that target each of `minions`: one
        SMISMEMBER per job whose mask may hold them, for all of them at once (a master restart)."""
        jobs = self.unswept_for(minions) if minions else []
        if not jobs:
            return []
        k = self.keys
        member = self.run(lambda b: [b.call("SMISMEMBER", k.targets(j), *minions) for j, _ in jobs])
        return [
            (m, jid, published)
            for (jid, published), flags in zip(jobs, member, strict=True)
            for m, flag in zip(minions, flags, strict=True)
            if flag
        ]

    def unswept_for(self, minions: list[str]) -> list[tuple[str, float]]:
        """
        (jid, published) of the jobs not swept yet that may target one of `minions`: two commands
        (the index and the jobs' target masks) whatever the number of unrelated jobs; a job
        without a mask (recorded by an older version) may target anyone.
        """
        k = self.keys
        rows = guard(self.conf, self.client.zrangebyscore, k.unswept, "-inf", f"({SWEPT}", None, None, True)
        if not rows:
            return []
        jobs = [(_text(jid), float(score)) for jid, score in rows]
        (masks,) = self.run(lambda b: [b.call("HMGET", k.masks, *[j for j, _ in jobs])])
        want = 0
        for m in minions:
            want |= 1 << bucket_of(m)
        return [job for job, mask in zip(jobs, masks, strict=True) if mask is None or int(mask) & want]

    def note_starts(self, engine: str, starts: dict[str, tuple[int, str]]) -> dict[str, list[str]]:
        """
        Record (re)connections this engine's master saw, as {minion: (stamp_ms, pid or '')},
        and put each minion on the engine's work set, due now. Returns note_start's answers.
        """
        k, conf, now = self.keys, self.conf, self.now_arg()
        minions = list(starts)

        def fill(b: Batch) -> None:
            for m in minions:
                stamp, pid = starts[m]
                b.script("note_start", [k.seq(m)], [engine, pid, stamp, self.lease_ms, conf.ttl, now])
            if minions:
                b.call("ZADD", k.active(engine), *[x for m in minions for x in (0, m)])
                b.call("EXPIRE", k.active(engine), conf.ttl)

        results = self.run(fill)
        answers = {m: [_text(x) for x in results[i]] for i, m in enumerate(minions)}
        self.gather_unswept([m for m, a in answers.items() if a[0] in ("new", "same")])
        return answers

    def gather_unswept(self, minions: list[str]) -> None:
        """Queue, for each minion, the not-yet-swept jobs that target it (the sweep has not yet)."""
        hits = self.unswept_targeting(minions)
        if hits:  # listed in `queues` too, so `pending` and `stats` show them before the sweep
            self.run(lambda b: self._stage_queue(b, hits, self.now()))

    def _stage_queue(
        self, b: Batch, entries: list[tuple[str, str, float]], now: float, listed: Iterable[str] = ()
    ) -> None:
        """
        Index (minion, jid, published) entries in each minion's queue, scored by publish time
        (the order to replay in), and list those minions (and `listed`) in `queues` at `now`.
        """
        k, ttl = self.keys, self.conf.ttl
        by_minion: dict[str, list[Any]] = {}
        for m, jid, published in entries:
            by_minion.setdefault(m, []).extend((published, jid))
        for m, pairs in by_minion.items():  # one ZADD per minion: a master restart queues millions
            b.call("ZADD", k.queue(m), "NX", *pairs)
            b.call("EXPIRE", k.queue(m), ttl)
        minions = dict.fromkeys([*by_minion, *listed])
        if minions:
            b.call("ZADD", k.queues, *[x for m in minions for x in (now, m)])
        b.call("EXPIRE", k.queues, ttl)

    @property
    def lease_ms(self) -> int:
        return int(self.conf.claim_lease * 1000)

    PEEK = 50  # queue entries a step sees

    def take(self, engine: str, minion: str, peek: int = PEEK) -> SeqView | None:
        """The minion's sequence, held for `engine`; None while another engine holds it (see held_by)."""
        k, now = self.keys, self.now_arg()
        (r,) = self.run(
            lambda b: b.script(
                "seq_take", [k.seq(minion), k.queue(minion)], [engine, self.lease_ms, peek, self.conf.ttl, now]
            )
        )
        if _text(r[0]) != "mine":
            self.held_by = _text(r[1])
            return None
        head = r[8]
        return SeqView(
            now_ms=int(r[1]),
            proc=_text(r[2]),
            started_ms=int(float(r[3])),
            cur=_text(r[4]),
            wait_ms=int(float(r[5])),
            acks=bool(_text(r[6])),
            pend_ms=int(float(r[7] or 0)),
            queue=[(_text(head[i]), float(head[i + 1])) for i in range(0, len(head), 2)],
            born_ms=int(float(r[9])),
            pub=_text(r[10]),
            engine=engine,
            via=_text(r[11]),
            via_ms=int(float(r[12])),
        )

    def _pair_args(
        self, minion: str, view: SeqView, jid: str, published: float, mode: str, fresh: str = ""
    ) -> list[Any]:
        conf = self.conf
        return [
            minion,
            view.proc,
            view.started_ms,
            int(published * 1000),
            mode,
            conf.max_attempts,
            int(conf.replay_interrupted),
            conf.ttl,
            conf.max_refusals,
            self.now_arg(),
            view.born_ms,
            fresh,
            conf.replay_jid,
            jid,
            view.engine,
            view.via,
            view.via_ms,
        ]

    def _pair_keys(self, jid: str) -> list[str]:
        k = self.keys
        return [k.job(jid), k.targets(jid), k.returned(jid), k.retry(jid)]

    def look(
        self, minion: str, view: SeqView, only: str | None = None, entries: list[tuple[str, float]] | None = None
    ) -> list[Look]:
        """Where each queued job (or only the one jid, or the given entries) stands for the minion's process."""
        if entries is None:
            entries = [e for e in view.queue if only is None or e[0] == only]
        results = self.run(
            lambda b: [
                b.script("pair", self._pair_keys(jid), self._pair_args(minion, view, jid, published, "look"))
                for jid, published in entries
            ]
        )
        looks = []
        for (jid, published), r in zip(entries, results, strict=True):
            state = _text(r[0])
            if state == "done":
                looks.append(Look(jid, published, state, final=_text(r[1])))
            else:
                looks.append(
                    Look(jid, published, state, int(r[1]), bool(r[2]), unpack(r[3]), int(float(r[4])), int(r[5]))
                )
        return looks

    def claim(
        self, minion: str, view: SeqView, jid: str, published: float, mode: str = "claim", fresh: str = ""
    ) -> Claim:
        """
        Atomically take the next replay of jid to the minion's process (see lua/pair.py); `fresh`
        is the jid to publish under when the original cannot be used.
        """
        args = self._pair_args(minion, view, jid, published, mode, fresh)
        (r,) = self.run(lambda b: b.script("pair", self._pair_keys(jid), args))
        state = _text(r[0])
        if state == "claimed":
            return Claim(jid, state, int(r[1]), unpack(r[2]), kind=_text(r[3]), pub_jid=_text(r[4]))
        return Claim(jid, state, int(r[1]) if len(r) > 1 and not isinstance(r[1], bytes) else 0)

    def seq_set(self, engine: str, minion: str, **fields: Any) -> bool:
        """
        Move the minion's sequence if `engine` still holds it. A value "+<ms>" is stored
        as Redis' now plus ms; "" deletes the field.
        """
        args: list[Any] = [engine, self.conf.ttl, self.now_arg()]
        for name, value in fields.items():
            args += [name, value]
        (r,) = self.run(lambda b: b.script("seq_set", [self.keys.seq(minion)], args))
        return bool(r)

    def release(self, jid: str, minion: str, kind: str = "attempt") -> None:
        self.run(lambda b: b.script("release", [self.keys.retry(jid)], [minion, kind, self.conf.ttl]))

    def settle(self, jid: str, minion: str, state: str, by: str = "") -> bool:
        """Mark a pair final (superseded, ...) unless it returned or is final already."""
        k = self.keys
        (r,) = self.run(
            lambda b: b.script(
                "settle", [k.targets(jid), k.returned(jid), k.retry(jid)], [minion, state, by, self.conf.ttl]
            )
        )
        return bool(r)

    def dequeue(self, minion: str, jids: Iterable[str]) -> None:
        jids = list(jids)
        if jids:
            self.run(lambda b: b.call("ZREM", self.keys.queue(minion), *jids))

    def schedule(self, engine: str, minion: str, due_ms: int | None) -> None:
        """Put the minion on the engine's work set at due_ms (Redis clock), or take it off (None)."""
        k = self.keys
        if due_ms is None:
            self.run(lambda b: b.call("ZREM", k.active(engine), minion))
        else:
            self.run(
                lambda b: (
                    b.call("ZADD", k.active(engine), due_ms, minion),
                    b.call("EXPIRE", k.active(engine), self.conf.ttl),
                )
            )

    def take_due(self, engine: str, limit: int) -> tuple[int, list[str], int | None]:
        """(Redis now in ms, minions due, the next due time after them or None)."""
        (r,) = self.run(lambda b: b.script("take_due", [self.keys.active(engine)], [limit, self.now_arg()]))
        nxt = _text(r[2])
        return int(r[0]), [_text(m) for m in r[1]], int(float(nxt)) if nxt else None

    def rewind(self, engine: str, chunk: int = 1000) -> list[str]:
        """Make every minion on the engine's work set due now (`chunk` per script call); returns them."""
        moved: list[str] = []
        while True:
            (r,) = self.run(lambda b: b.script("rewind", [self.keys.active(engine)], [self.now_arg(), chunk]))
            moved += [_text(m) for m in r]
            if len(r) < chunk:
                return moved

    def work_set(self, engine: str) -> list[str]:
        """Every minion on the engine's work set."""
        return [_text(m) for m in guard(self.conf, self.client.zrange, self.keys.active(engine), 0, -1)]

    def owners(self, minions: list[str]) -> dict[str, str]:
        """The engine serving each minion ('' if none): that of its newest connection, else the holder."""
        seq = self.keys.seq
        found = self.run(lambda b: [b.call("HMGET", seq(m), "via", "owner") for m in minions]) if minions else []
        return {m: _text(via or owner or b"") for m, (via, owner) in zip(minions, found, strict=True)}

    def engine_alive(self, engine: str) -> bool:
        """Has the engine beaten within 3 x claim_lease (what makes the others adopt its minions)?"""
        score = guard(self.conf, self.client.zscore, self.keys.engines, engine)
        return score is not None and self.now() * 1000 - float(score) < self.conf.claim_lease * 3000

    def heartbeat(self, engine: str, dead_after_ms: int) -> list[str]:
        """Say this engine is alive; returns the engines that have gone silent."""
        (r,) = self.run(
            lambda b: b.script("heartbeat", [self.keys.engines], [engine, dead_after_ms, self.conf.ttl, self.now_arg()])
        )
        return [_text(e) for e in r if _text(e) != engine]

    def adopt(self, engine: str, dead: str) -> list[str]:
        """Move a silent engine's minions to this engine's work set."""
        k = self.keys
        (r,) = self.run(
            lambda b: b.script("adopt", [k.active(dead), k.active(engine), k.engines], [dead, self.conf.ttl])
        )
        return [_text(m) for m in r]

    def record_minion_run(self, jid: str, minion: str, job: dict) -> bool:
        """Record a refused run the minion started itself (see _MINION_RUN); False if jid is known."""
        k, ttl = self.keys, self.conf.ttl
        keys = [k.job(jid), k.targets(jid), k.retry(jid), k.alias(jid)]
        created, _, _ = self.run(
            lambda b: (
                b.script("minion_run", keys, [ttl, pack(job), minion, self.now_arg()]),
                # listed as swept: the engine queues it itself (a no-op for a known job: it is there)
                b.call("ZADD", k.unswept, "NX", SWEPT + job["time"], jid),
                b.call("EXPIRE", k.unswept, ttl),
            )
        )
        return bool(created)

    def enqueue_refused(self, engine: str, pairs: list[tuple[str, str]], hold_ms: int = 0) -> list[tuple[str, str]]:
        """
        Queue refused (jid, minion) pairs in publish order and wake whoever serves each minion.
        Returns the pairs whose job is not recorded yet (the returner is behind): try again later.
        """
        k = self.keys
        jids = sorted({jid for jid, _ in pairs})
        scores = self.run(lambda b: [b.call("ZSCORE", k.unswept, jid) for jid in jids])
        published = {jid: float(s) % SWEPT for jid, s in zip(jids, scores, strict=True) if s is not None}
        known = [(jid, m) for jid, m in pairs if jid in published]

        if known:
            self.run(lambda b: self._stage_queue(b, [(m, jid, published[jid]) for jid, m in known], self.now()))
            self.wake([m for _, m in known], engine, hold_ms)
        return [(jid, m) for jid, m in pairs if jid not in published]

    def wake(self, minions: list[str], fallback: str | None, hold_ms: int = 0) -> None:
        """Put minions on the work set of the engine serving each (or `fallback`'s), due in hold_ms."""
        minions = list(dict.fromkeys(minions))
        if not minions:
            return
        k, ttl = self.keys, self.conf.ttl
        owners = self.owners(minions)
        due = int(self.now() * 1000) + hold_ms

        def fill(b: Batch) -> None:
            for m, owner in owners.items():
                engine = owner or fallback
                if engine:
                    b.call("ZADD", k.active(engine), "LT", due, m)
                    b.call("EXPIRE", k.active(engine), ttl)

        self.run(fill)

    def active_count(self) -> int:
        """Minions on some engine's work set."""
        engines = [_text(e) for e in guard(self.conf, self.client.zrange, self.keys.engines, 0, -1)]
        counts = self.run(lambda b: [b.call("ZCARD", self.keys.active(e)) for e in engines]) if engines else []
        return sum(int(c) for c in counts)

    def sequence(self, minion: str) -> dict[str, str]:
        """The minion's replay sequence fields, for operator views."""
        raw = guard(self.conf, self.client.hgetall, self.keys.seq(minion))
        return {_text(f): _text(v) for f, v in raw.items()}

    def _count(self, batch: Batch, counter: str, n: int) -> None:
        batch.call("HINCRBY", self.keys.stats, counter, n)
        batch.call("EXPIRE", self.keys.stats, self.conf.ttl)

    def count(self, counter: str, n: int) -> None:
        """Add n to one of the `stats` counters."""
        if n:
            self.run(lambda b: self._count(b, counter, n))

    COUNTERS = ("queued", "replays", "refusals", "superseded", "exhausted", "interrupted")

    def stats(self) -> dict[str, Any]:
        """Counts for operators and metrics (one pipeline, plus the pending listing)."""
        k, now = self.keys, self.now()
        swept, unswept, counters = self.run(
            lambda b: (
                b.call("ZCOUNT", k.unswept, SWEPT + now - self.conf.ttl, "+inf"),
                b.call("ZCOUNT", k.unswept, now - self.conf.ttl, f"({SWEPT}"),
                b.call("HGETALL", k.stats),
            )
        )
        pending = self.pending(self.queued_minions())
        published = [from_iso(e["published_at"]) for entries in pending.values() for e in entries]
        counters = {_text(f): int(v) for f, v in counters.items()}
        return {
            "tracked_jobs": int(swept) + int(unswept),
            "unswept_jobs": int(unswept),
            "minions_replaying": self.active_count(),
            "pending_total": sum(len(e) for e in pending.values()),
            "pending_by_minion": {m: len(e) for m, e in sorted(pending.items()) if e},
            "oldest_pending_age_seconds": round(now - min(published), 1) if published else 0,
            **{name: counters.get(name, 0) for name in self.COUNTERS},
        }

    def stage_refusal(self, batch: Batch, jid: str, minion: str, run_jid: str) -> None:
        """Salt refused to start the job on minion (a state run was running): still owed."""
        k = self.keys
        args = [self.conf.ttl, minion, self.now_arg(), run_jid]
        batch.script("record_refusal", [k.targets(jid), k.returned(jid), k.retry(jid)], args)

    def stage_start(self, batch: Batch, engine: str, minion: str, stamp_ms: int, pid: str) -> None:
        """
        Note a (re)connection for `engine` and put the minion on its work set, due now: what
        note_starts does, for the returner, which sees the start even when the engine did not
        (restarting, or its bus subscriber fell behind). The engine gathers unswept jobs when
        it serves the start; if it never got it, the sweep queues them and wakes it.
        """
        k, conf = self.keys, self.conf
        batch.script("note_start", [k.seq(minion)], [engine, pid, stamp_ms, self.lease_ms, conf.ttl, self.now_arg()])
        batch.call("ZADD", k.active(engine), "LT", 0, minion)
        batch.call("EXPIRE", k.active(engine), conf.ttl)

    def stage_delivery(self, batch: Batch, jid: str, minion: str, at_ms: int, acked: str = "") -> None:
        """A minion acknowledged the job (``salt/job/<acked>/start/<id>``, Salt 3008 start_event)."""
        k = self.keys
        args = [self.conf.ttl, minion, at_ms, acked or jid]
        batch.script("record_delivery", [k.targets(jid), k.returned(jid), k.retry(jid)], args)

    # -- rate limit (engine) ------------------------------------------------------------

    def take_tokens(self, wanted: int) -> int:
        """Replays allowed now by the fleet-wide `max_replays_per_second` bucket."""
        rate = self.conf.max_replays_per_second
        burst = max(1, math.ceil(rate / 10))  # 100 ms worth: any one-second window stays near `rate`
        now_ms = int(self.now() * 1000)
        (granted,) = self.run(lambda b: b.script("take_tokens", [self.keys.rate], [rate, burst, now_ms, wanted]))
        return int(granted)

    # -- operator views (runner) ------------------------------------------------------

    def job(self, jid: str) -> dict | None:
        blob = guard(self.conf, self.client.get, self.keys.job(jid))
        return unpack(blob) if blob else None

    def queued_minions(self) -> list[str]:
        return [_text(m) for m in guard(self.conf, self.client.zrange, self.keys.queues, 0, -1)]

    def view(self, minion: str) -> SeqView:
        """The minion's sequence read-only, as the next step would see it (operator views)."""
        k = self.keys
        seq, queue = self.run(
            lambda b: (b.call("HGETALL", k.seq(minion)), b.call("ZRANGE", k.queue(minion), 0, -1, "WITHSCORES"))
        )
        f = {_text(x): _text(v) for x, v in seq.items()}
        return SeqView(
            now_ms=int(self.now() * 1000),
            proc=f.get("proc", ""),
            # No process known yet: everything queued is owed to the next one.
            started_ms=int(float(f["started"])) if f.get("proc") else 2**62,
            cur=f.get("cur", ""),
            wait_ms=int(float(f.get("wait", 0))),
            acks=bool(f.get("acks")),
            pend_ms=int(float(f.get("pend", 0))),
            queue=[(_text(j), float(score)) for j, score in queue],
            born_ms=int(float(f.get("born", 0))),
            pub=f.get("pub", ""),
            engine=f.get("owner", ""),
            via=f.get("via", ""),
            via_ms=int(float(f.get("via_at", 0))),
        )

    # 'after': published after the process connected. If the minion is up, Salt delivered it;
    # if it went down since, it is owed to the next process: listed as pending either way.
    PENDING_STATES = {
        "owed": "pending",
        "after": "pending",
        "refused": "refused",
        "acked": "pending",
        "sent": "running",
    }

    def pending(self, minions: list[str]) -> dict[str, list[dict]]:
        """
        Each minion's owed jobs in the order they will run (publish order), with the
        replay in flight first. Jobs it returned or that are final leave the index.
        """
        from .replay import supersede_key  # the engine's rule, shared

        out: dict[str, list[dict]] = {}
        stale: dict[str, list[str]] = {}
        empty: list[str] = []
        for m in minions:
            view = self.view(m)
            looks = self.look(m, view) if view.queue else []
            stale[m] = [lk.jid for lk in looks if lk.state == "done" and lk.jid != view.cur]
            if len(stale[m]) == len(looks):
                empty.append(m)
            live = [lk for lk in looks if lk.state in self.PENDING_STATES]
            keys = {lk.jid: supersede_key(lk.job, self.conf.supersede_functions) for lk in live}
            newest = {key: lk.jid for lk in live if lk.state != "sent" and (key := keys[lk.jid])}
            entries = []
            for lk in live:
                entry = {
                    "jid": lk.jid,
                    "fun": lk.job.get("fun"),
                    "arg": lk.job.get("arg", []),
                    "attempts": lk.attempts,
                    "published_at": iso(lk.published),
                    "state": "in_flight" if lk.jid == view.cur else self.PENDING_STATES[lk.state],
                }
                if lk.state == "sent" and lk.jid != view.cur:
                    continue  # delivered to this process and running: not pending
                key = keys[lk.jid]
                if key and lk.state != "sent" and newest[key] != lk.jid:
                    entry["superseded_by"] = newest[key]
                entries.append(entry)
            entries.sort(key=lambda e: e["state"] != "in_flight")  # stable: publish order otherwise
            if view.cur and entries and entries[0]["state"] == "in_flight":
                for e in entries[1:]:
                    e["waiting_behind"] = view.cur
                    # being replayed: it is connected, so a job published now reaches it at once
                    e["live_jobs_run_first"] = True
            out[m] = entries
        self._drop_stale({m: js for m, js in stale.items() if js}, empty)
        return out

    def _drop_stale(self, stale: dict[str, list[str]], empty: list[str]) -> None:
        if not stale and not empty:
            return

        def fill(b: Batch) -> None:
            for m, jids in stale.items():
                b.call("ZREM", self.keys.queue(m), *jids)
            if empty:
                b.call("ZREM", self.keys.queues, *empty)

        self.run(fill)
        if empty:  # a sweep may have queued for one of them meanwhile: it must stay listed
            sizes = self.run(lambda b: [b.call("ZCARD", self.keys.queue(m)) for m in empty])
            back = [m for m, n in zip(empty, sizes, strict=True) if n]
            if back:
                now = self.now()
                self.run(lambda b: self._stage_queue(b, [], now, listed=back))

    def flush(self, minion: str, jids: list[str] | None = None, dry_run: bool = False) -> list[str]:
        """
        Cancel what minion is owed (all, or the given jids): queued, not yet swept, or in
        flight. Returns the jids cancelled; with dry_run, those it would cancel, changing nothing.
        """
        if jids is None:
            jids = self.owed_candidates([minion])[minion]
        k, args = self.keys, [minion, self.conf.ttl, "1" if dry_run else "0"]
        results = self.run(lambda b: [b.script("flush", [k.targets(j), k.returned(j), k.retry(j)], args) for j in jids])
        flushed = [jid for jid, done in zip(jids, results, strict=False) if done]
        if dry_run:
            return flushed
        # The replay in flight stays queued: the engine keeps the next job waiting until it ends.
        running = _text(guard(self.conf, self.client.hget, k.seq(minion), "cur") or b"")
        self.dequeue(minion, [j for j in jids if j != running])
        return flushed

    def status(self, jid: str) -> dict | None:
        k = self.keys
        blob, targets, returned, retry, unswept = self.run(
            lambda b: (
                b.call("GET", k.job(jid)),
                b.call("SUNION", k.targets(jid), k.returned(jid)),  # a returned minion left targets
                b.call("SMEMBERS", k.returned(jid)),
                b.call("HGETALL", k.retry(jid)),
                b.call("ZSCORE", k.unswept, jid),
            )
        )
        if not blob:
            return None
        job = unpack(blob)
        fields = {_text(f): _text(v) for f, v in retry.items()}
        returned = {_text(m) for m in returned}
        now = self.now()
        minions = {}
        for m in sorted(_text(t) for t in targets):
            minions[m] = minion_state(m, returned, fields, job, now, self.conf.timeout)
        if job.get("excluded"):
            minions = {}
        return {"job": job, "minions": minions, "swept": unswept is None or float(unswept) >= SWEPT}

    def missing(self, jid: str) -> list[str]:
        """Targets of jid that have not returned."""
        k = self.keys
        return sorted(_text(m) for m in guard(self.conf, self.client.sdiff, [k.targets(jid), k.returned(jid)]))

    def processes(self, minions: list[str]) -> dict[str, tuple[str, bool]]:
        """Each minion's last identified process (pid, '' none) and whether a newer connection's pid is being asked."""
        found = self.run(lambda b: [b.call("HMGET", self.keys.seq(m), "proc", "pend") for m in minions])
        return {m: (_text(proc) if proc else "", bool(pend)) for m, (proc, pend) in zip(minions, found, strict=True)}

    def prepare_retry(self, jid: str, minions: list[str], send: set[str], fresh: str) -> RetryClaim:
        """
        Reset and queue the minions of jid that did not return and have nothing in flight;
        mark those in `send` sent to their current process under `fresh` (see retry_claim).
        """
        k, ttl, now = self.keys, self.conf.ttl, self.now()
        procs = self.processes(minions) if minions else {}
        args: list[Any] = [ttl, repr(now), self.now_arg(), int(self.conf.replay_wait * 1000), fresh]
        for m in minions:
            proc, pending = procs[m]
            args += [m, proc, "1" if pending else "0", "1" if m in send else "0"]
        (r,) = self.run(lambda b: b.script("retry_claim", [k.targets(jid), k.returned(jid), k.retry(jid)], args))
        claim = RetryClaim(*([_text(m) for m in part] for part in r))
        published = (self.job(jid) or {}).get("time", now)

        if claim.reset:
            self.run(lambda b: self._stage_queue(b, [(m, jid, published) for m in claim.reset], now))
        return claim


@dataclass
class RetryClaim:
    reset: list[str]  # given a fresh budget and queued
    claimed: list[str]  # of those, marked sent under the fresh jid: publish to them now
    busy: list[str]  # the job is in flight to the minion's current process: left alone


def minion_state(
    minion: str, returned: set[str], fields: dict[str, str], job: dict, now: float, timeout: float
) -> dict:
    """One minion's state in a job, as `status` shows it."""
    attempts = int(fields.get(f"a:{minion}", 0))
    state: dict[str, Any] = {"attempts": attempts}
    sent = fields.get(f"t:{minion}")
    if sent:
        state["last_replay_at"] = iso(int(float(sent)) / 1000)
    if minion in returned:
        return {"state": "returned", **state}
    final = fields.get(f"x:{minion}")
    if final:
        if fields.get(f"s:{minion}"):
            state["superseded_by"] = fields[f"s:{minion}"]
        return {"state": final, **state}
    refused = fields.get(f"k:{minion}")
    if refused is not None and refused == (sent or "0"):
        return {"state": "refused", **state, "refusals": int(fields.get(f"c:{minion}", 0))}
    if fields.get(f"d:{minion}"):
        return {"state": "delivered", **state, "delivered_at": iso(int(fields[f"d:{minion}"]) / 1000)}
    if sent:
        return {"state": "replayed", **state}
    queued_at = fields.get(f"q:{minion}")
    if queued_at is not None or now - job.get("time", 0) >= timeout:
        if queued_at is not None:
            state["queued_at"] = iso(float(queued_at))
        return {"state": "pending", **state}
    return {"state": "waiting", **state}


ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso(epoch: float) -> str:
    return time.strftime(ISO_FORMAT, time.gmtime(epoch))


def from_iso(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, ISO_FORMAT)))
