"""
Replaying owed jobs to a minion, one at a time and oldest first, and the engine loop around it.

A minion's replay sequence lives in Redis (``P:{m:<id>}:seq``): the process being
served, the replay in flight and how long to wait for it, and the engine that holds
it. Any engine can continue a sequence another one started; only the holder moves it.

The loop is a plain object fed by a ``next_event`` callable, so tests drive it for N
events without a master. It never lets an exception out: Redis trouble backs off.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Config
from .events import fire_action
from .recorder import event_time, is_refusal, refused_by, replay_origin
from .redis_io import RedisUnavailable, pack
from .store import Claim, Look, SeqView, Store

log = logging.getLogger(__name__)

# Only the new-style tag: 3008 also fires the legacy `minion_start` for every
# start, and reacting to both would serve it twice.
START_TAG = re.compile(r"^salt/minion/(.+)/start$")
PRESENCE_TAG = "salt/presence/change"
REFUSAL_BACKOFF_MAX = 60.0
PUBLISH_FAILED_RETRY_MS = 5000
SENDABLE = ("owed", "refused", "acked")  # pair states a step may publish

Publish = Callable[[str, str, dict, int, dict], None]
Fire = Callable[[dict, str], None]
Probe = Callable[[list[str], float], dict[str, str]]


@dataclass
class Step:
    """What one step of a minion's sequence decided."""

    due_ms: int | None = None  # when to look again (Redis clock); None: nothing left to do here
    probe: bool = False  # the minion's process must be identified first
    pend_ms: int = 0  # the unidentified (re)connection's stamp
    waiting_for: tuple[str, ...] = ()  # jids whose return or ack should wake the minion
    published: str = ""  # the jid replayed by this step
    held_by: str = ""  # another engine holds the sequence: hand it the wake-up


def supersede_key(job: dict | None, patterns: tuple[str, ...]) -> str | None:
    """
    Jobs with one key are interchangeable: only the newest owed one is replayed.

    A pattern ``fun`` matches calls of fun without arguments; ``fun(*)`` with any
    arguments (the key includes them, so only identical calls supersede each other).
    """
    if not job or not patterns or not isinstance(job.get("fun"), str):
        return None
    fun, args = job["fun"], job.get("arg") or []
    for pattern in patterns:
        any_args = pattern.endswith("(*)")
        if fnmatch.fnmatchcase(fun, pattern[:-3] if any_args else pattern) and (any_args or not args):
            return fun + "\0" + pack(args).hex()
    return None


def refusal_backoff_ms(refusals: int) -> int:
    """Wait before sending a refused state run again: 2, 4, 8 ... 60 s."""
    return int(min(REFUSAL_BACKOFF_MAX, 2.0 ** max(1, refusals)) * 1000)


class Replayer:
    def __init__(
        self,
        store: Store,
        conf: Config,
        publish: Publish,
        fire: Fire,
        new_jid: Callable[[], str] | None = None,
        engine: str = "engine",
    ):
        self.store = store
        self.conf = conf
        self.publish = publish
        self.fire = fire
        self.new_jid = new_jid
        self.engine = engine

    @property
    def wait_ms(self) -> int:
        return int(self.conf.replay_wait * 1000)

    def step(self, minion: str) -> Step:
        """
        Move the minion's sequence one step: wait for the replay in flight, settle what
        is done, or publish the oldest owed job. Raises RedisUnavailable.
        """
        view = self.store.take(self.engine, minion)
        if view is None:  # another engine holds it
            return Step(held_by=self.store.held_by)
        if view.pend_ms or not view.proc:
            return Step(probe=True, pend_ms=view.pend_ms)
        if view.cur and view.pub and view.now_ms < view.wait_ms:
            # A replay in flight: until it returns or its wait ends, only its own state matters
            # (a re-check costs one look, not one per queued job).
            head = self.store.look(minion, view, only=view.cur)
            if head and (head[0].state == "sent" or head[0].final == "flushed"):
                return Step(view.wait_ms, waiting_for=tuple({view.cur, view.pub}))
        looks = self._look(minion, view)
        flushed_running = next((lk for lk in looks if lk.jid == view.cur and lk.final == "flushed" and view.pub), None)
        if flushed_running is not None and view.now_ms < view.wait_ms:
            # Flushed while it runs: the next job still waits for it (its return or its deadline).
            return Step(view.wait_ms, waiting_for=tuple({view.cur, view.pub}))
        self.store.dequeue(minion, [lk.jid for lk in looks if lk.state == "done"])
        live = [lk for lk in looks if lk.state != "done"]
        current = next((lk for lk in live if lk.jid == view.cur), None)
        again = None
        if current is not None and current.state == "sent" and not view.pub:
            again = current  # its engine died between claim and publish: it may never have gone out
        elif current is not None and current.state == "sent":
            if view.now_ms < view.wait_ms:
                return Step(view.wait_ms, waiting_for=tuple({current.jid, view.pub}))
            if view.acks and not current.acked:  # an acknowledging minion never saw it: send it again
                again = current
            else:
                log.info("job_retry: %s still running %s after replay_wait; next job goes out", minion, current.jid)
        candidates = [lk for lk in live if lk.state in SENDABLE or lk is again]
        candidates = self._supersede(minion, candidates)
        if not candidates:
            if len(view.queue) >= self.store.PEEK and len(live) < len(looks):
                return Step(view.now_ms)  # done ones cleared from a full peek: look at what is behind
            self.store.seq_set(self.engine, minion, cur="", wait="")
            return Step()
        return self._send(minion, view, candidates[0], "again" if candidates[0] is again else "claim")

    LOOK_WINDOW = 4

    def _look(self, minion: str, view: SeqView) -> list[Look]:
        """
        As much of the queue as the next step needs, oldest first: windows of LOOK_WINDOW
        entries until one holds a job to send (so a backlog costs O(1) per step), all of it
        when that job may be superseded by a newer identical one, and the replay in flight.
        """
        queue = view.queue
        looks: list[Look] = []
        end = 0
        while end < len(queue) and not any(lk.state in SENDABLE for lk in looks):
            looks += self.store.look(minion, view, entries=queue[end : end + self.LOOK_WINDOW])
            end += self.LOOK_WINDOW
        if view.cur and all(lk.jid != view.cur for lk in looks):
            looks += self.store.look(minion, view, only=view.cur)
        sendable = [lk for lk in looks if lk.state in SENDABLE or (lk.jid == view.cur and lk.state != "done")]
        rest = [e for e in queue[end:] if e[0] != view.cur]
        if rest and any(supersede_key(lk.job, self.conf.supersede_functions) for lk in sendable):
            looks += self.store.look(minion, view, entries=rest)
        position = {jid: i for i, (jid, _) in enumerate(queue)}
        return sorted(looks, key=lambda lk: position.get(lk.jid, len(queue)))

    def _send(self, minion: str, view: SeqView, head: Look, mode: str) -> Step:
        if head.state == "refused":  # sent_ms: when it was refused
            hold = head.sent_ms + refusal_backoff_ms(head.refusals)
            if view.now_ms < hold:
                return Step(hold)
        if not self.store.take_tokens(1):
            return Step(view.now_ms + math.ceil(1000 / self.conf.max_replays_per_second))
        if not self.store.seq_set(self.engine, minion, cur=head.jid, pub="", wait=f"+{self.wait_ms}"):
            return Step()  # another engine took the sequence over meanwhile
        # A fresh jid when the original may not do: replay_jid new, or a re-send after a refusal.
        may_need = self.conf.replay_jid == "new" or head.state == "refused" or mode == "again"
        fresh = self.new_jid() if self.new_jid is not None and may_need else ""
        claim = self.store.claim(minion, view, head.jid, head.published, mode, fresh)
        if claim.state in ("exhausted", "interrupted"):
            self._settled(minion, claim)
            return Step(view.now_ms)
        if claim.state != "claimed":
            return Step(view.now_ms)  # it changed under us: look again
        pub_jid = self._publish(minion, claim)
        if not pub_jid:
            self.store.release(claim.jid, minion, claim.kind)
            self.store.seq_set(self.engine, minion, cur="", wait="")
            return Step(view.now_ms + PUBLISH_FAILED_RETRY_MS)
        self.store.seq_set(self.engine, minion, pub=pub_jid)  # its return or ack wakes the minion
        self.store.count("replays" if claim.kind == "attempt" else "refusals", 1)
        return Step(view.now_ms + self.wait_ms, waiting_for=tuple({claim.jid, pub_jid}), published=claim.jid)

    def _supersede(self, minion: str, candidates: list[Look]) -> list[Look]:
        keys = {lk.jid: supersede_key(lk.job, self.conf.supersede_functions) for lk in candidates}
        newest = {key: lk.jid for lk in candidates if (key := keys[lk.jid])}  # oldest first: the last wins
        kept = []
        for lk in candidates:
            key = keys[lk.jid]
            if key is None or newest[key] == lk.jid:
                kept.append(lk)
                continue
            if self.store.settle(lk.jid, minion, "superseded", newest[key]):
                log.info("job_retry: %s owed %s; superseded by %s", minion, lk.jid, newest[key])
                fire_action(self.fire, "superseded", lk.jid, minion, by=newest[key])
                self.store.count("superseded", 1)
            self.store.dequeue(minion, [lk.jid])
        return kept

    def _settled(self, minion: str, claim: Claim) -> None:
        self.store.dequeue(minion, [claim.jid])
        self.store.count(claim.state, 1)
        if claim.state == "exhausted":
            log.warning("job_retry: %s owed %s after %d replays; giving up", minion, claim.jid, claim.attempt)
            fire_action(self.fire, "exhausted", claim.jid, minion, attempts=claim.attempt)
        else:
            log.warning("job_retry: %s restarted while running %s; marked interrupted", minion, claim.jid)
            fire_action(self.fire, "interrupted", claim.jid, minion)

    def _publish(self, minion: str, claim: Claim) -> str:
        """Publish the claimed replay; returns the jid it went out under, or '' if it failed."""
        fun = claim.job.get("fun")
        pub_jid = claim.pub_jid or claim.jid
        extra = {"orig_jid": claim.jid} if pub_jid != claim.jid else {}
        try:
            if extra:  # the fresh jid's return closes the original
                self.store.register_alias(pub_jid, claim.jid)
            self.publish(minion, pub_jid, claim.job, claim.attempt, extra)
        except Exception as exc:  # one failed publish must not stop the rest
            log.error("job_retry: replay of %s (%s) to %s failed: %s", claim.jid, fun, minion, exc)
            return ""
        log.info("job_retry: replayed %s (%s) to %s as %s, attempt %d", claim.jid, fun, minion, pub_jid, claim.attempt)
        data = {"fun": fun, "attempt": claim.attempt, **({"replay_jid": pub_jid} if extra else {})}
        if claim.kind == "refusal":
            data["after_refusal"] = True
        fire_action(self.fire, "replayed", claim.jid, minion, **data)
        return pub_jid

    def sweep(self, progress: Callable[[int], None] | None = None) -> list[tuple[str, str, dict]]:
        """Queue what came due and fire a ``queued`` event per newly queued pair."""
        queued = self.store.sweep(progress=progress)
        for jid, minion, job in queued:
            fire_action(self.fire, "queued", jid, minion, fun=job.get("fun"))
        if queued:
            log.info("job_retry: sweep queued %d missed (jid, minion) pair(s)", len(queued))
        return queued


def is_plain_highstate(data: dict) -> bool:
    """
    A highstate without arguments: the only run a minion starts itself that we may owe it.

    Its refusal comes from the bus or a ``req`` return, both of which another minion can
    forge (event.send, _syndic_return): a highstate runs only what the master's top file
    gives that minion, so a forgery can at worst make it apply that once more.
    """
    args = data.get("fun_args")
    return data.get("fun") in ("state.highstate", "state.apply") and not args


def minion_run_job(minion: str, data: dict) -> dict:
    """A job record for a run the minion started itself, from its return."""
    args = data.get("fun_args")
    return {
        "fun": data["fun"],
        "arg": list(args) if isinstance(args, list) else [],
        "tgt": [minion],
        "tgt_type": "list",
        "user": "minion",
        "minion_run": True,
        "time": event_time(data),
    }


class EngineLoop:
    """
    One master's replay engine: its bus in, replays and sweeps out.

    Start events of this master's minions are written to Redis first (the minion's
    sequence and this engine's work set), then served. Returns and acks matter only
    for replays in flight, and refusals only of state runs: every other event costs
    no Redis call. Redis is polled at most once a second when idle.
    """

    MAX_BACKOFF = 30.0
    DUE_PER_PASS = 200
    IDLE_POLL = 1.0
    PROBE_TRIES = 3
    REFUSAL_KEEP = 60.0
    EVENTS_PER_PASS = 1000
    MINION_RUN_AFTER = 5.0  # a refused run still unknown by then was started by the minion itself
    RECHECK_WAITING = 30.0  # a replay in flight is looked at this often, in case its return event was missed
    # A return or ack on the bus is only a hint (anyone can fire it): Redis says whether it
    # happened, once Salt's store_job has handed it to us, just after the bus event.
    HINT_RECHECKS_MS = (200, 1000, 5000)

    def __init__(
        self,
        replayer: Replayer,
        next_event: Callable[[float], dict | None],
        interval: float,
        recorder: Any = None,
        probe: Probe | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.replayer = replayer
        self.store = replayer.store
        self.conf = replayer.conf
        self.engine = replayer.engine
        self.next_event = next_event
        self.interval = interval
        self.recorder = recorder  # writes the events the engine acts on; drains the spool
        self.probe = probe
        self.clock = clock
        self.sleep = sleep
        self.next_sweep = clock()
        self.next_poll = 0.0
        self.next_beat = 0.0
        self.next_adopt = 0.0
        self.next_spool_check = 0.0
        self.starts: dict[str, tuple[float, str]] = {}  # seen, not yet written: minion -> (master's stamp, pid)
        self.noted: list[dict] = []  # returns/acks/refusals to write before acting on them
        self.refused: dict[tuple[str, str], float] = {}  # (jid, minion) -> give up writing it at (clock)
        self.acked: set[str] = set()
        self.minion_runs: dict[tuple[str, str], tuple[float, dict]] = {}  # refused by our replay: (after, job)
        self.woken: set[str] = set()
        self.waiting: dict[str, tuple[str, ...]] = {}  # minion -> jids whose return wakes it
        self.hinted: dict[str, int] = {}  # minion -> re-checks done since a return/ack hint
        self.unverified: dict[str, int] = {}  # minion -> probe failures, for adopted/unidentified ones
        self.backoff = 0.0
        self.rewound = False  # what the minions on our work set wait for died with the last process

    def step(self) -> None:
        """Handle the events waiting (up to EVENTS_PER_PASS), then do what is due. Never raises."""
        try:
            event = self.next_event(self._wait())
            handled = 0
            while event:  # a burst (a master restart: thousands of starts) is written in one pass
                self.handle(event.get("tag"), event.get("data"))
                handled += 1
                event = self.next_event(0) if handled < self.EVENTS_PER_PASS else None
            self._maintain()
        except Exception as exc:  # the engine process must live on
            self._fail(exc)

    def handle(self, tag: Any, data: Any) -> None:
        """Sort one bus event; no Redis I/O here."""
        if not isinstance(tag, str) or not isinstance(data, dict):
            return
        if tag.startswith("salt/job/"):
            self._job_event(tag, data)
            return
        match = START_TAG.match(tag)
        if match:
            grains = data.get("grains")
            pid = grains.get("pid") if isinstance(grains, dict) else None
            self._start(match.group(1), data, str(pid) if isinstance(pid, int) else "")
        elif tag == PRESENCE_TAG and self.conf.replay_on_presence:
            for minion in data.get("new") or ():
                if isinstance(minion, str):
                    self._start(minion, data, "")

    def _start(self, minion: str, data: dict, pid: str) -> None:
        # The master's stamp, not when this engine got to it: engines must agree.
        stamp = event_time(data)  # this master's clock: put on Redis' when written
        if stamp >= self.starts.get(minion, (0.0, ""))[0]:
            self.starts[minion] = (stamp, pid)

    def _job_event(self, tag: str, data: dict) -> None:
        parts = tag.split("/", 4)  # salt/job/<jid>/ret|start/<id>
        if len(parts) != 5 or parts[3] not in ("ret", "start"):
            return
        jid, minion = parts[2], parts[4]
        if jid in self.waiting.get(minion, ()):
            self.noted.append({"tag": tag, "data": data})  # only an ack is written from the bus
            self.woken.add(minion)
            self.hinted[minion] = 0
            if parts[3] == "start":
                self.acked.add(minion)
        elif parts[3] == "ret" and is_refusal(data):
            self.noted.append({"tag": tag, "data": data})
            pair = (replay_origin(data) or jid, minion)
            self.refused.setdefault(pair, self.clock() + self.REFUSAL_KEEP)
            fun = data.get("fun")
            wanted = isinstance(fun, str) and (self.recorder is None or self.recorder.wanted(fun))
            if wanted and is_plain_highstate(data) and refused_by(data) & set(self.waiting.get(minion, ())):
                self.minion_runs[pair] = (self.clock() + self.MINION_RUN_AFTER, minion_run_job(minion, data))

    def _wait(self) -> float:
        if self.starts or self.woken or self.noted:
            return 0.0
        return max(0.0, min(self.IDLE_POLL, self.next_poll - self.clock()))

    def _maintain(self) -> None:
        now = self.clock()
        # The spool first: a job spooled during an outage must be in Redis before a start is served.
        if self.recorder is not None and (self.starts or now >= self.next_spool_check):
            self.next_spool_check = now + self.IDLE_POLL
            if self.recorder.spool.has_data() and not self.recorder.flush_spool():
                raise RedisUnavailable(f"Redis unreachable at {self.conf.redis_display} (spool not drained)")
        if not self.rewound:
            self._rewind()
        self._write_noted()
        if self.starts:
            self._note_starts()
        if now >= self.next_beat:
            self._heartbeat(now)
        if self.woken or now >= self.next_poll:
            self._serve_due()
        if self.clock() >= self.next_sweep:
            self.replayer.sweep()
            self.next_sweep = self.clock() + self.interval
        if self.backoff:
            log.warning("job_retry: Redis is reachable again; engine resumed")
            self.backoff = 0.0

    def _rewind(self) -> None:
        moved = self.store.rewind(self.engine)
        # adopted by the last run and not yet asked whether they are connected to this master
        owners = self.store.owners(self.store.work_set(self.engine))
        unasked = [m for m, owner in owners.items() if owner != self.engine]
        for minion in unasked:
            self.unverified.setdefault(minion, 0)
        self.rewound = True
        if moved:
            log.info("job_retry: engine %s took back %d minion(s) from its last run", self.engine, len(moved))

    def _write_noted(self) -> None:
        # Each list is cleared only once written: a Redis blip must not lose a start or a refusal.
        if self.noted and self.recorder is not None:
            self.recorder.record(self.noted)  # idempotent: the returner writes them too; spools on failure
        self.noted = []
        if self.refused:  # due after the first backoff: the state run that refused it is still going
            later = self.store.enqueue_refused(self.engine, list(self.refused), refusal_backoff_ms(1))
            # the returner has not written those jobs yet: keep them a while (the sweep is the backstop)
            self.refused = {pair: self.refused[pair] for pair in later if self.refused[pair] > self.clock()}
            self._record_minion_runs()
        while self.acked:
            minion = next(iter(self.acked))
            self.store.seq_set(self.engine, minion, acks="1")
            self.acked.discard(minion)

    def _record_minion_runs(self) -> None:
        """A state run the minion started itself (startup_states) that our replay made Salt refuse."""
        for pair, (after, job) in list(self.minion_runs.items()):
            if pair not in self.refused:  # written as a known job's refusal, or given up
                del self.minion_runs[pair]
            elif self.clock() >= after:
                job = {**job, "time": self.store.aligned(job["time"])}
                created = self.store.record_minion_run(*pair, job)  # raises on a blip: kept for the next pass
                del self.minion_runs[pair]
                if created:
                    log.info("job_retry: %s refused its own run %s (%s) for a replay; owed", *pair[::-1], job["fun"])

    def _note_starts(self) -> None:
        starts = dict(self.starts)
        self.store.ensure_clock()
        stamped = {m: (int(self.store.aligned(stamp) * 1000), pid) for m, (stamp, pid) in starts.items()}
        answers = self.store.note_starts(self.engine, stamped)
        for minion, noted in starts.items():
            if self.starts.get(minion) == noted:
                del self.starts[minion]
        for minion, answer in answers.items():
            log.info("job_retry: %s connected (%s)", minion, answer[0])
            self.woken.add(minion)

    def _heartbeat(self, now: float) -> None:
        self.next_beat = now + min(self.IDLE_POLL, self.conf.claim_lease / 3)
        if self.store.clock_due():  # this master's clock against Redis', once a minute
            self.store.measure_clock()
        dead = self.store.heartbeat(self.engine, int(self.conf.claim_lease * 3000))
        if now < self.next_adopt:
            return
        self.next_adopt = now + self.interval
        for other in dead:
            adopted = self.store.adopt(self.engine, other)
            if adopted:
                log.warning("job_retry: engine %s went silent; taking over %d minion(s)", other, len(adopted))
            for minion in adopted:  # is it connected to this master? ask before publishing
                self.unverified.setdefault(minion, 0)
                self.woken.add(minion)

    def _serve_due(self) -> None:
        redis_now, due, nxt = self.store.take_due(self.engine, self.DUE_PER_PASS)
        # at most DUE_PER_PASS woken ones too: the loop reads the bus between passes
        woken = list(self.woken)[: self.DUE_PER_PASS]
        self.woken.difference_update(woken)
        to_probe: dict[str, int] = {}
        for minion in dict.fromkeys([*due, *woken]):
            if minion in self.unverified:
                to_probe[minion] = 0
                continue
            step = self.replayer.step(minion)
            if step.probe:
                to_probe[minion] = step.pend_ms
            else:
                self._schedule(minion, step, redis_now)
        if to_probe:
            self._identify(to_probe, redis_now)
        wait = (nxt - redis_now) / 1000 if nxt is not None else self.IDLE_POLL
        more = len(due) >= self.DUE_PER_PASS or self.woken
        self.next_poll = self.clock() + (0 if more else min(self.IDLE_POLL, max(0, wait)))

    def _schedule(self, minion: str, step: Step, redis_now: int) -> None:
        due = step.due_ms
        if due is not None and step.waiting_for:  # a missed return event costs seconds, not replay_wait
            due = min(due, redis_now + int(self.RECHECK_WAITING * 1000))
            done = self.hinted.get(minion)
            if done is not None and done < len(self.HINT_RECHECKS_MS):
                due = min(due, redis_now + self.HINT_RECHECKS_MS[done])
                self.hinted[minion] = done + 1
        if due is None or not step.waiting_for or self.hinted.get(minion, 0) >= len(self.HINT_RECHECKS_MS):
            self.hinted.pop(minion, None)
        self.store.schedule(self.engine, minion, due)
        if step.held_by:  # the engine holding the sequence acts on it (a return, a refusal)
            self.store.wake([minion], None)
        if step.due_ms is None or not step.waiting_for:
            self.waiting.pop(minion, None)
        else:
            self.waiting[minion] = step.waiting_for

    def _identify(self, minions: dict[str, int], redis_now: int) -> None:
        """Ask minions for their pid through this master: it names the process and proves the connection."""
        pids = self.probe(list(minions), self.conf.probe_timeout) if self.probe else {}
        answered = {m: (stamp, pids[m]) for m, stamp in minions.items() if pids.get(m)}
        if answered:
            self.store.note_starts(self.engine, answered)
            self.woken.update(answered)
        for minion in answered:
            self.unverified.pop(minion, None)
        for minion in set(minions) - set(answered):
            tries = self.unverified.get(minion, 0) + 1
            if tries >= self.PROBE_TRIES:
                self.unverified.pop(minion, None)
                self.store.schedule(self.engine, minion, None)
                owner = self.store.owners([minion])[minion]
                silent = "job_retry: %s did not answer through this master; %s"
                if owner and owner != self.engine:  # back to the engine it is connected through
                    log.warning(silent, minion, f"handing it back to {owner}")
                    self.store.wake([minion], None)
                else:
                    log.warning(silent, minion, "leaving it to its next start")
            else:
                self.unverified[minion] = tries
                self.store.schedule(self.engine, minion, redis_now + int(self.conf.probe_timeout * 1000))

    def _fail(self, exc: Exception) -> None:
        self.backoff = min(self.MAX_BACKOFF, max(1.0, self.backoff * 2))
        if isinstance(exc, RedisUnavailable):
            log.error("job_retry engine: %s; retrying in %.0fs", exc, self.backoff)
        else:
            log.exception("job_retry engine: unexpected error; retrying in %.0fs", self.backoff)
        self.next_sweep = self.clock() + self.backoff
        self.sleep(self.backoff)

    def run_forever(self) -> None:
        while True:
            self.step()
