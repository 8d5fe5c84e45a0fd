"""
Turning Salt's job events into job_retry state (the returner's work).

One call of ``Recorder.record(events)`` is one Redis round trip, whatever the
batch size. It never raises: what could not be written (Redis down) goes to a
bounded on-disk spool and is written first on a later call (or by the engine).

Trust: a job (``new``) and a return (``ret``) are recorded only when the master's
own job cache hands them over (``trusted=True``: the publish path, Salt's
``store_job``). The event bus carries what any minion can fire with any tag and
body (``event.send``, batched events), so from the bus only the 3008 start acks
and, on a master, minion starts are taken (they only say whom to serve: the
engine publishes that minion's recorded jobs), and a ``new`` or ``ret`` a
minion sent is logged and dropped.
"""

from __future__ import annotations

import datetime
import fnmatch
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from .config import Config
from .events import fire_action
from .keys import mask_of
from .redis_io import Batch, RedisUnavailable, guard, pack
from .spool import Spool
from .store import Store

log = logging.getLogger(__name__)

JID_RE = re.compile(r"^[0-9A-Za-z_.-]{1,128}$")
CONTROL_CHARS = re.compile(r"[\x00-\x1f]")
MAX_MINION_ID = 512
# Spool-internal mark of an event the master's job cache handed over. The spool is
# a local file only this package writes; bus events never get the mark.
TRUSTED = "job_cache:"
ACK_RE = re.compile(r"^salt/job/[^/]+/start/[^/]+$")
START_RE = re.compile(r"^salt/minion/(.+)/start$")
SPOOLED_PREFIXES = ("salt/job/", "salt/minion/", TRUSTED)
UNTRUSTED_RE = re.compile(r"^salt/job/[^/]+/(new|ret/.+)$")
REJECT_LOG_EVERY = 60.0  # seconds between two log lines about rejected bus events
# After Redis failed, spool without asking it for this long (doubling to the max while it keeps
# failing): the job cache runs in Salt's publish and return path, and a Redis that hangs would
# otherwise hold every publish and every return for socket_timeout.
REDIS_RETRY_AFTER, REDIS_RETRY_MAX = 2.0, 60.0


def valid_jid(jid: Any) -> bool:
    return isinstance(jid, str) and bool(JID_RE.match(jid))


def valid_minion(minion: Any) -> bool:
    return isinstance(minion, str) and 0 < len(minion) <= MAX_MINION_ID and not CONTROL_CHARS.search(minion)


def valid_minions(minions: list) -> list[str]:
    """The valid ids of a target list; C-level checks for the usual all-valid case."""
    try:
        # isprintable() is false for every control character (and some harmless ones: then
        # the slow path decides); "" and over-long ids are the other invalid cases.
        if "".join(minions).isprintable() and "" not in minions and max(map(len, minions), default=0) <= MAX_MINION_ID:
            return minions
    except TypeError:  # a non-string id
        pass
    return [m for m in minions if valid_minion(m)]


def function_names(fun: Any) -> list[str]:
    """A job's function(s): compound jobs carry a list."""
    if isinstance(fun, str):
        return [fun]
    if isinstance(fun, (list, tuple)):
        return [f for f in fun if isinstance(f, str)]
    return []


def is_wanted(fun: Any, conf: Config) -> bool:
    """Whether a job running `fun` may be replayed (any one wanted function is enough)."""
    for name in function_names(fun):
        if any(fnmatch.fnmatchcase(name, pat) for pat in conf.exclude_functions):
            continue
        if not conf.include_functions or any(fnmatch.fnmatchcase(name, pat) for pat in conf.include_functions):
            return True
    return False


# salt/modules/state.py running(): what a state function returns, with retcode 1,
# when another state run holds the minion (state_queue off, or queue=<n> exceeded).
REFUSAL_RE = re.compile(r'^The function ".+" is running as PID \d+ and was started at .* with jid (\S+)$')
QUEUE_FAILED = "Failed to queue job"


def is_refusal(data: dict) -> bool:
    """Whether a return is Salt refusing to start a state run, not a run that happened."""
    fun, ret = data.get("fun"), data.get("return")
    if not isinstance(fun, str) or not fun.startswith("state."):
        return False
    if isinstance(ret, list) and ret and all(isinstance(r, str) and REFUSAL_RE.match(r) for r in ret):
        return True
    return isinstance(ret, dict) and str(ret.get("comment", "")).startswith(QUEUE_FAILED) and ret.get("result") is False


def refused_by(data: dict) -> set[str]:
    """The jids of the state runs that made Salt refuse this one (from its refusal text)."""
    ret = data.get("return")
    found = (REFUSAL_RE.match(r) for r in ret if isinstance(r, str)) if isinstance(ret, list) else ()
    return {m.group(1) for m in found if m}


def event_time(data: dict) -> float:
    stamp = data.get("_stamp")
    if isinstance(stamp, str):
        try:
            parsed = datetime.datetime.fromisoformat(stamp)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.timezone.utc)
            return parsed.timestamp()
        except ValueError:
            pass
    return time.time()


def job_from_new(data: dict) -> dict:
    """The fields a replay needs, from a ``salt/job/<jid>/new`` event."""
    arg = data.get("arg", [])
    return {
        "fun": data.get("fun"),
        "arg": list(arg) if isinstance(arg, (list, tuple)) else [arg],
        "tgt": data.get("tgt"),
        "tgt_type": data.get("tgt_type", "glob"),
        "user": data.get("user"),
        "time": event_time(data),
    }


def replay_origin(data: dict) -> str | None:
    """The original jid when this return belongs to a fresh-jid `retry` publish."""
    meta = data.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("job_retry"), dict):
        orig = meta["job_retry"].get("orig_jid")
        if valid_jid(orig):
            return orig
    return None


class Recorder:
    def __init__(
        self,
        store: Store,
        conf: Config,
        spool: Spool,
        fire: Callable[[dict, str], None] | None = None,
        engine: str | None = None,
    ):
        self.store = store
        self.engine = engine  # this master's engine: starts seen on its bus are noted for it
        self.conf = conf
        self.spool = spool
        self.fire = fire  # for delivered/returned events of replays; None where there is no bus
        self._notices: list[tuple[str, str, str, dict]] = []
        self._new_jobs: list[tuple[int, str]] = []  # (batch index of record_new, jid)
        self._wanted: dict[str, bool] = {}
        self._rejected = 0  # bus events dropped since the last log line about them
        self._rejected_logged = 0.0
        self._redis_down_until = 0.0  # monotonic: spool without trying Redis until then
        self._redis_down_for = 0.0
        self.redis_retry_after = REDIS_RETRY_AFTER
        self._engine_checked_at = float("-inf")  # when the engine was last seen running

    def from_bus(self, tag: Any, data: Any) -> bool:
        """Whether a bus event may be recorded: only acks. A job or return a minion sent is logged."""
        if not isinstance(tag, str):
            return False
        if ACK_RE.match(tag):
            return True
        if self.engine and START_RE.match(tag):
            return self._engine_running()
        if UNTRUSTED_RE.match(tag) and isinstance(data, dict) and data.get("cmd") == "_minion_event":
            self._reject(tag, data.get("id"))
        return False

    ENGINE_CHECK_EVERY = 10.0

    def _engine_running(self) -> bool:
        """
        Is this master's engine running (a heartbeat)? A start noted for an engine that never runs
        (not configured on this master, or not loaded yet) would hold the minion away from the
        engines that do. A yes holds for ENGINE_CHECK_EVERY s; a Redis blip counts as running (the
        start is spooled and written later).
        """
        now = time.monotonic()
        if now >= self._engine_checked_at + self.ENGINE_CHECK_EVERY:
            try:
                alive = self.store.engine_alive(self.engine)
            except RedisUnavailable:
                alive = True
            if not alive:  # asked again next time: at a master's start the engine beats a moment later
                return False
            self._engine_checked_at = now
        return True

    def _reject(self, tag: str, sender: Any) -> None:
        """Log a forged job/return event, at most one line a minute (a minion can fire thousands)."""
        self._rejected += 1
        now = time.monotonic()
        if now - self._rejected_logged < REJECT_LOG_EVERY:
            return
        more = f" ({self._rejected - 1} more since the last report)" if self._rejected > 1 else ""
        log.warning(
            "job_retry: ignored %s fired by minion %r: jobs and returns are recorded from the "
            "master's job cache, never from the event bus%s",
            tag,
            sender,
            more,
        )
        self._rejected, self._rejected_logged = 0, now

    def stage(self, batch: Batch, tag: Any, data: Any) -> bool:
        """Add the writes one event needs to batch. Returns whether it was relevant."""
        if not isinstance(tag, str) or not isinstance(data, dict):
            return False
        trusted = tag.startswith(TRUSTED)
        tag = tag[len(TRUSTED) :] if trusted else tag
        started = START_RE.match(tag)
        if started and self.engine:
            return self._stage_start(batch, started.group(1), data)
        if not tag.startswith("salt/job/"):
            return False
        # salt/job/<jid>/new | salt/job/<jid>/ret/<id> | salt/job/<jid>/start/<id>
        parts = tag.split("/", 4)
        if len(parts) == 4 and parts[3] == "new":
            return trusted and self._stage_new(batch, parts[2], data)
        if len(parts) == 5 and parts[3] == "ret":
            return trusted and self._stage_ret(batch, parts[2], parts[4], data)
        if len(parts) == 5 and parts[3] == "start":
            return self._stage_ack(batch, parts[2], parts[4], data)
        return False

    def wanted(self, fun: Any) -> bool:
        """is_wanted, cached per function name: every event asks it."""
        if not isinstance(fun, str):
            return is_wanted(fun, self.conf)
        answer = self._wanted.get(fun)
        if answer is None:
            answer = self._wanted[fun] = is_wanted(fun, self.conf)
        return answer

    def _stage_new(self, batch: Batch, jid: str, data: dict) -> bool:
        minions = data.get("minions")
        if not valid_jid(jid) or not isinstance(minions, list):
            log.warning("job_retry: ignoring malformed new-job event for jid %r", jid)
            return False
        job = job_from_new(data)
        job["time"] = self.store.aligned(job["time"])  # the master's stamp, on Redis' clock
        if not function_names(job["fun"]):
            log.warning("job_retry: ignoring new-job event %s without a function name", jid)
            return False
        if not self.wanted(job["fun"]):
            self.store.stage_excluded_job(batch, jid, job)
            return True
        targets = valid_minions(minions)
        blob = pack(job)
        if len(blob) > self.conf.max_job_bytes:
            log.warning(
                "job_retry: job %s (%s) not recorded: %d bytes packed, over max_job_bytes (%d)",
                jid,
                job["fun"],
                len(blob),
                self.conf.max_job_bytes,
            )
            self.store.stage_unrecorded_job(batch, jid, {**job, "arg": [], "too_large": len(blob)})
            return True
        if len(targets) != len(minions):
            log.warning("job_retry: job %s: ignoring %d invalid minion id(s)", jid, len(minions) - len(targets))
        # a replay's own `new` (our publish) is not a job to gather: it is swept or queued already
        mask = None if data.get("job_retry_replay") else mask_of(targets)
        self._new_jobs.append((self.store.stage_job(batch, jid, blob, job["time"], targets, mask), jid))
        return True

    def _stage_ret(self, batch: Batch, jid: str, minion: str, data: dict) -> bool:
        if not valid_jid(jid) or not valid_minion(minion):
            log.warning("job_retry: ignoring malformed return event for jid %r minion %r", jid, minion)
            return False
        if not self.wanted(data.get("fun")):
            return False
        if is_refusal(data):
            log.info("job_retry: %s refused %s (a state run was running); still owed", minion, jid)
            self.store.stage_refusal(batch, replay_origin(data) or jid, minion, jid)
            self._notice("refused", jid, minion, data)
            return True
        self.store.stage_return(batch, replay_origin(data) or jid, minion)
        self._notice("returned", jid, minion, data)
        return True

    def _stage_start(self, batch: Batch, minion: str, data: dict) -> bool:
        if not valid_minion(minion):
            return False
        grains = data.get("grains")
        pid = grains.get("pid") if isinstance(grains, dict) else None
        stamp_ms = int(self.store.aligned(event_time(data)) * 1000)  # the master's stamp, on Redis' clock
        self.store.stage_start(batch, self.engine, minion, stamp_ms, str(pid) if isinstance(pid, int) else "")
        return True

    def _stage_ack(self, batch: Batch, jid: str, minion: str, data: dict) -> bool:
        # The minion fires it as a _minion_event: the job's fields are nested under "data".
        inner = data.get("data") if isinstance(data.get("data"), dict) else data
        if not valid_jid(jid) or not valid_minion(minion) or not self.wanted(inner.get("fun")):
            return False
        at_ms = int(self.store.aligned(event_time(data)) * 1000)  # the master's stamp, on Redis' clock
        self.store.stage_delivery(batch, replay_origin(inner) or jid, minion, at_ms, acked=jid)
        self._notice("delivered", jid, minion, inner)
        return True

    def _notice(self, action: str, jid: str, minion: str, data: dict) -> None:
        """Remember a replay's delivery or return, to announce once it is written."""
        meta = data.get("metadata")
        if self.fire is not None and isinstance(meta, dict) and isinstance(meta.get("job_retry"), dict):
            info = meta["job_retry"]
            extra = {"attempt": info.get("attempt"), **({"replay_jid": jid} if replay_origin(data) else {})}
            self._notices.append((action, replay_origin(data) or jid, minion, extra))

    def _announce(self) -> None:
        notices, self._notices = self._notices, []
        for action, jid, minion, extra in notices:
            fire_action(self.fire, action, jid, minion, **extra)

    def record(self, events: Iterable[Any], trusted: bool = False) -> int:
        """
        Write the relevant events (after anything spooled). Returns how many were written.

        trusted: the events come from the master's job cache (its publish path and
        ``store_job``), not from the event bus; only then are jobs and returns taken.
        """
        events = [e for e in events or () if isinstance(e, dict)]
        if trusted:
            fresh = [(TRUSTED + e["tag"], e.get("data")) for e in events if isinstance(e.get("tag"), str)]
        else:
            fresh = [(e.get("tag"), e.get("data")) for e in events if self.from_bus(e.get("tag"), e.get("data"))]
        if time.monotonic() < self._redis_down_until:  # Redis failed a moment ago: do not wait on it
            self._spool(fresh, None)
            return 0
        # the spool is shared by every process of the master (workers, EventReturn, engine): what
        # another one spooled (a job) must be written before this (its return), so look every time
        if self.spool.has_data() and not self.flush_spool():
            self._spool(fresh, None)
            return 0
        if not fresh:
            return 0
        return self._write(fresh, spool_on_failure=True)

    def _redis_failed(self) -> None:
        self._redis_down_for = min(REDIS_RETRY_MAX, max(self.redis_retry_after, self._redis_down_for * 2))
        self._redis_down_until = time.monotonic() + self._redis_down_for

    def _redis_ok(self) -> None:
        self._redis_down_for = self._redis_down_until = 0.0

    def flush_spool(self) -> bool:
        """Write spooled events to Redis; False if Redis is still unreachable."""
        try:
            self.spool.drain(lambda chunk: self._write(chunk, spool_on_failure=False))
        except RedisUnavailable:
            self._redis_failed()
            return False
        except Exception:  # the events stay spooled; never raise into Salt
            log.exception("job_retry: could not write the spool to Redis; keeping it")
            return False
        return True

    def _write(self, events: list[tuple], spool_on_failure: bool) -> int:
        batch = self.store.batch()
        self._notices = []
        self._new_jobs: list[tuple[int, str]] = []
        try:
            self.store.ensure_clock()  # event stamps go on Redis' clock: measured once per process
        except RedisUnavailable as exc:
            if not spool_on_failure:
                raise
            self._redis_failed()
            self._spool(events, exc)
            return 0
        relevant = [(tag, data) for tag, data in events if self._safe_stage(batch, tag, data)]
        if not len(batch):
            return 0
        if self._new_jobs:
            self.store.stage_index_ttl(batch)
        try:
            clock_op, before = self.store.stage_clock(batch), self.store.clock()
            results = guard(self.conf, batch.execute)
            self.store.note_clock(results, clock_op, before, self.store.clock())
            # a replay's or retry's fresh jid: a second round trip, only for those
            self.store.forget_aliases([jid for i, jid in self._new_jobs if results[i] == 0])
            self._announce()
            self._redis_ok()
        except RedisUnavailable as exc:
            if not spool_on_failure:
                raise
            self._redis_failed()
            self._spool(relevant, exc)
            return 0
        except Exception:  # a returner must never raise into Salt
            if not spool_on_failure:  # draining: the spool (whose lock we hold) keeps them
                raise
            log.exception("job_retry: could not record %d event(s); spooling them for the next try", len(relevant))
            self._spool(relevant, None)
            return 0
        return len(relevant)

    def _safe_stage(self, batch: Batch, tag: Any, data: Any) -> bool:
        try:
            return self.stage(batch, tag, data)
        except Exception:  # one bad event must not sink the batch
            log.exception("job_retry: could not parse event %r; skipped", tag)
            return False

    def _spool(self, events: list, exc: Exception | None) -> None:
        relevant = [(t, d) for t, d in events if isinstance(t, str) and t.startswith(SPOOLED_PREFIXES)]
        if not relevant:
            return
        try:
            kept = self.spool.append(relevant)
        except OSError as err:
            log.error(
                "job_retry: could not spool %d event(s) to %s: %s; they are lost", len(relevant), self.spool.path, err
            )
            return
        if exc is not None:
            log.warning("job_retry: %s; spooled %d event(s) to %s", exc, kept, self.spool.path)
