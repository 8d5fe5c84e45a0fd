"""
Replaying owed jobs to a minion that started, and the engine loop around it.

The loop is a plain object fed by a ``next_event`` callable, so tests drive it
for N events without a master. It never lets an exception out: Redis trouble
backs off, and minions whose start could not be handled are retried.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .events import fire_action
from .recorder import event_time
from .store import Claim, RedisUnavailable, Store

log = logging.getLogger(__name__)

# Only the new-style tag: 3008 also fires the legacy `minion_start` for every
# start, and reacting to both would replay twice.
START_TAG = re.compile(r"^salt/minion/(.+)/start$")
PRESENCE_TAG = "salt/presence/change"

Publish = Callable[[str, str, dict, int, dict], None]
Fire = Callable[[dict, str], None]


@dataclass
class Served:
    """What serving one minion's start did."""

    replayed: list[str] = field(default_factory=list)
    exhausted: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # over the rate limit: released, tried again soon
    retry_at: float | None = None  # epoch seconds; None when the start is fully served

    def later(self, when: float) -> None:
        self.retry_at = when if self.retry_at is None else min(self.retry_at, when)


class Replayer:
    def __init__(
        self, store: Store, conf: Config, publish: Publish, fire: Fire, new_jid: Callable[[], str] | None = None
    ):
        self.store = store
        self.conf = conf
        self.publish = publish
        self.fire = fire
        self.new_jid = new_jid

    def serve(self, minion: str, started_ms: int | None = None) -> Served:
        """
        Replay, oldest first, every job owed to the minion process started at started_ms.

        Raises RedisUnavailable. A claim held by another engine, a publish that failed
        and replays over the rate limit set ``retry_at``.
        """
        now = self.store.clock()
        started_ms = int(now * 1000) if started_ms is None else started_ms
        jids, queued = self.store.owed_candidates(minion)
        claims = self.store.claim(minion, jids, started_ms) if jids else []
        served = Served()
        claimed = sorted((c for c in claims if c.state == "claimed"), key=lambda c: c.job.get("time", 0))
        granted = self.store.take_tokens(len(claimed)) if claimed else 0
        published = [c.jid for c in claimed[:granted] if self._publish(minion, c, served)]
        self.store.mark_published(minion, published)
        for claim in claimed[granted:]:
            self.store.release(claim.jid, minion)
            served.deferred.append(claim.jid)
        if served.deferred:
            served.later(now + max(0.05, len(served.deferred) / self.conf.max_replays_per_second))
        if served.failed:
            served.later(now + 5)
        for claim in claims:
            if claim.state == "leased":  # another engine is on it; look again when its lease lapses
                served.later(claim.until_ms / 1000 + 0.05)
            elif claim.state in ("exhausted", "interrupted"):
                self._settled(minion, claim, served)
        unqueue = [c.jid for c in claims if c.state not in ("claimed", "leased", "sent", "running") and c.jid in queued]
        self.store.dequeue(minion, unqueue)
        self.store.count("exhausted", len(served.exhausted))
        self.store.count("interrupted", len(served.interrupted))
        return served

    def _settled(self, minion: str, claim: Claim, served: Served) -> None:
        if claim.state == "exhausted":
            log.warning("job_retry: %s owed %s after %d replays; giving up", minion, claim.jid, claim.attempt)
            fire_action(self.fire, "exhausted", claim.jid, minion, attempts=claim.attempt)
            served.exhausted.append(claim.jid)
        else:
            log.warning("job_retry: %s restarted while running %s; marked interrupted", minion, claim.jid)
            fire_action(self.fire, "interrupted", claim.jid, minion)
            served.interrupted.append(claim.jid)

    def _publish(self, minion: str, claim: Claim, served: Served) -> bool:
        fun = claim.job.get("fun")
        pub_jid, extra = claim.jid, {}
        try:
            if self.conf.replay_jid == "new" and self.new_jid is not None:
                pub_jid, extra = self.new_jid(), {"orig_jid": claim.jid}
                self.store.register_alias(pub_jid, claim.jid)
            self.publish(minion, pub_jid, claim.job, claim.attempt, extra)
        except Exception as exc:  # one failed publish must not stop the rest
            log.error("job_retry: replay of %s (%s) to %s failed: %s", claim.jid, fun, minion, exc)
            self.store.release(claim.jid, minion)
            served.failed.append(claim.jid)
            return False
        log.info("job_retry: replayed %s (%s) to %s, attempt %d", claim.jid, fun, minion, claim.attempt)
        data = {"fun": fun, "attempt": claim.attempt, **({"replay_jid": pub_jid} if pub_jid != claim.jid else {})}
        fire_action(self.fire, "replayed", claim.jid, minion, **data)
        served.replayed.append(claim.jid)
        return True

    def sweep(self, progress: Callable[[int], None] | None = None) -> list[tuple[str, str, dict]]:
        """Queue what came due and fire a ``queued`` event per newly queued pair."""
        queued = self.store.sweep(progress=progress)
        for jid, minion, job in queued:
            fire_action(self.fire, "queued", jid, minion, fun=job.get("fun"))
        if queued:
            log.info("job_retry: sweep queued %d missed (jid, minion) pair(s)", len(queued))
        return queued


class EngineLoop:
    """
    One master's replay engine: start events in, replays and sweeps out.

    A start event is first written to Redis (``P:starts``), then served; so a
    start survives an engine crash and any engine sharing the Redis can serve it.
    """

    MAX_BACKOFF = 30.0
    STARTS_PER_PASS = 200

    def __init__(
        self,
        replayer: Replayer,
        next_event: Callable[[float], dict | None],
        interval: float,
        recorder: Any = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.replayer = replayer
        self.store = replayer.store
        self.next_event = next_event
        self.interval = interval
        self.recorder = recorder  # drains the returner's spool once Redis is back
        self.clock = clock
        self.sleep = sleep
        self.next_sweep = clock()
        self.unnoted: dict[str, int] = {}  # starts seen but not yet written to Redis
        self.not_before: dict[str, float] = {}  # minion -> epoch s before which not to serve it
        self.backoff = 0.0

    def step(self) -> None:
        """Handle at most one event, then serve due starts and sweeps. Never raises."""
        try:
            event = self.next_event(self._wait())
            if event:
                self.handle(event.get("tag"), event.get("data"))
            self._maintain()
        except Exception as exc:  # the engine process must live on
            self._fail(exc)

    def handle(self, tag: Any, data: Any) -> None:
        if not isinstance(tag, str):
            return
        # The master's stamp on the event, not when this engine got to it: every engine
        # (and a slow one) must agree on when the minion process started.
        now_ms = int(self.store.clock() * 1000)
        if isinstance(data, dict) and isinstance(data.get("_stamp"), str):
            now_ms = int(event_time(data) * 1000)
        match = START_TAG.match(tag)
        if match:
            self.unnoted[match.group(1)] = now_ms
        elif tag == PRESENCE_TAG and self.replayer.conf.replay_on_presence and isinstance(data, dict):
            for minion in data.get("new") or ():
                if isinstance(minion, str):
                    self.unnoted[minion] = now_ms

    def _wait(self) -> float:
        soon = self.store.clock() + 0.05
        busy = self.unnoted or any(t <= soon for t in self.not_before.values())
        return 0.05 if busy else 1.0

    def _maintain(self) -> None:
        if self.unnoted:
            self.store.note_starts(self.unnoted)
            self.unnoted.clear()
        if self.recorder is not None and self.recorder.spool.has_data() and not self.recorder.flush_spool():
            raise RedisUnavailable(f"Redis unreachable at {self.replayer.conf.redis_display} (spool not drained)")
        self._serve_due_starts()
        if self.clock() >= self.next_sweep:
            self.replayer.sweep()
            self.next_sweep = self.clock() + self.interval
        if self.backoff:
            log.warning("job_retry: Redis is reachable again; engine resumed")
            self.backoff = 0.0

    def _serve_due_starts(self) -> None:
        now = self.store.clock()
        due = self.store.due_starts(self.STARTS_PER_PASS)
        names = {minion for minion, _ in due}
        self.not_before = {m: t for m, t in self.not_before.items() if m in names}  # others were served elsewhere
        for minion, started_ms in due:
            if self.not_before.get(minion, 0) > now:
                continue
            served = self.replayer.serve(minion, started_ms)
            if served.replayed or served.exhausted or served.interrupted:
                log.info("job_retry: served start of %s: %s", minion, served)
            if served.retry_at is None:
                self.store.finish_start(minion, started_ms)
                self.not_before.pop(minion, None)
            else:
                self.not_before[minion] = served.retry_at
            if served.deferred:  # the fleet-wide rate limit is spent for now
                return

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
