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
from typing import Any

from .config import Config
from .store import Claim, RedisUnavailable, Store

log = logging.getLogger(__name__)

# Only the new-style tag: 3008 also fires the legacy `minion_start` for every
# start, and reacting to both would replay twice.
START_TAG = re.compile(r"^salt/minion/(.+)/start$")
EVENT_PREFIX = "salt/job_retry"

Publish = Callable[[str, str, dict, int], None]
Fire = Callable[[dict, str], None]


def fire_action(fire: Fire, action: str, jid: str, minion: str, **data: Any) -> None:
    """Fire ``salt/job_retry/<jid>/<action>/<minion>`` for reactors; never raises."""
    try:
        fire({"jid": jid, "minion": minion, **data}, f"{EVENT_PREFIX}/{jid}/{action}/{minion}")
    except Exception:
        log.exception("job_retry: could not fire %s event for %s/%s", action, jid, minion)


class Replayer:
    def __init__(self, store: Store, conf: Config, publish: Publish, fire: Fire):
        self.store = store
        self.conf = conf
        self.publish = publish
        self.fire = fire

    def replay_to(self, minion: str) -> dict[str, list]:
        """Replay every job owed to minion, oldest first. Raises RedisUnavailable."""
        jids, queued = self.store.owed_candidates(minion)
        claims = self.store.claim(minion, jids) if jids else []
        summary: dict[str, list] = {"replayed": [], "exhausted": [], "failed": []}
        finished = [c.jid for c in claims if c.state not in ("claimed", "leased") and c.jid in queued]
        claimed = sorted((c for c in claims if c.state == "claimed"), key=lambda c: c.job.get("time", 0))
        for claim in claimed:
            self._publish(minion, claim, summary)
        for claim in claims:
            if claim.state == "exhausted":
                log.warning("job_retry: %s owed %s after %d replays; giving up", minion, claim.jid, claim.attempt)
                fire_action(self.fire, "exhausted", claim.jid, minion, attempts=claim.attempt)
                summary["exhausted"].append(claim.jid)
        self.store.dequeue(minion, finished)
        return summary

    def _publish(self, minion: str, claim: Claim, summary: dict) -> None:
        fun = claim.job.get("fun")
        try:
            self.publish(minion, claim.jid, claim.job, claim.attempt)
        except Exception as exc:
            log.error("job_retry: replay of %s (%s) to %s failed: %s", claim.jid, fun, minion, exc)
            self.store.release(claim.jid, minion)
            summary["failed"].append(claim.jid)
            return
        log.info("job_retry: replayed %s (%s) to %s, attempt %d", claim.jid, fun, minion, claim.attempt)
        fire_action(self.fire, "replayed", claim.jid, minion, fun=fun, attempt=claim.attempt)
        summary["replayed"].append(claim.jid)

    def sweep(self) -> list[tuple[str, str, dict]]:
        """Queue what came due and fire a ``queued`` event per newly queued pair."""
        queued = self.store.sweep()
        for jid, minion, job in queued:
            fire_action(self.fire, "queued", jid, minion, fun=job.get("fun"))
        if queued:
            log.info("job_retry: sweep queued %d missed (jid, minion) pair(s)", len(queued))
        return queued


class EngineLoop:
    """One master's replay engine: start events in, replays and sweeps out."""

    MAX_BACKOFF = 30.0

    def __init__(
        self,
        replayer: Replayer,
        next_event: Callable[[float], dict | None],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.replayer = replayer
        self.next_event = next_event
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self.next_sweep = clock()
        self.owed_retry: set[str] = set()  # started minions not yet served (Redis was down)
        self.backoff = 0.0

    def step(self) -> None:
        """Handle at most one event, then any due sweep or retry. Never raises."""
        try:
            event = self.next_event(1.0)
            if event:
                self.handle(event.get("tag"), event.get("data"))
            if self.clock() >= self.next_sweep or self.owed_retry:
                self._maintain()
        except Exception as exc:
            self._fail(exc)

    def handle(self, tag: Any, data: Any) -> None:
        match = START_TAG.match(tag) if isinstance(tag, str) else None
        if not match:
            return
        minion = match.group(1)
        try:
            summary = self.replayer.replay_to(minion)
        except RedisUnavailable:
            self.owed_retry.add(minion)
            raise
        if summary["replayed"] or summary["exhausted"]:
            log.info("job_retry: %s started: %s", minion, summary)

    def _maintain(self) -> None:
        for minion in sorted(self.owed_retry):
            self.replayer.replay_to(minion)
            self.owed_retry.discard(minion)
        if self.clock() >= self.next_sweep:
            self.replayer.sweep()
            self.next_sweep = self.clock() + self.interval
        if self.backoff:
            log.warning("job_retry: Redis is reachable again; engine resumed")
            self.backoff = 0.0

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
