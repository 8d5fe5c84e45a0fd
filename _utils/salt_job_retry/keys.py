"""
The Redis schema of salt-job-retry: every key, its type, what it holds, its TTL.

The only place key names are spelled (``Keys``) and documented (``SCHEMA``, from which
``scripts/gen_config_docs.py`` writes the README's table). ``P`` is ``key_prefix``;
``{<jid>}`` is a Redis Cluster hash tag, so all keys of one job live in one slot and one
Lua script may touch them; a minion's keys share ``{m:<id>}`` and the engines' keys
``{active}`` for the same reason. Every key gets ``EXPIRE ttl`` when it is written
(the job index once per batch that adds jobs); nothing uses ``KEYS`` or ``SCAN``.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple
from urllib.parse import quote

# `P:unswept` scores of swept jobs: SWEPT + publish time, beyond every sweep's cutoff.
SWEPT = 10**11
BUCKETS = 64  # `P:masks`: a job's targets as a 64-bit mask of buckets (CRC32 of the id mod 64)
ALL = (1 << BUCKETS) - 1
ALL_BUCKETS_FROM = 8 * BUCKETS  # targets from which a job is in every bucket without hashing them


def bucket_of(minion: str) -> int:
    return zlib.crc32(minion.encode("utf-8", "surrogatepass")) % BUCKETS


def mask_of(minions: list[str]) -> int:
    """The buckets a job's targets fall in, as a mask (all of them for a broad job)."""
    if len(minions) >= ALL_BUCKETS_FROM:
        return ALL
    mask = 0
    for m in minions:
        mask |= 1 << bucket_of(m)
    return mask


class KeyDoc(NamedTuple):
    pattern: str
    kind: str
    content: str


SCHEMA = (
    KeyDoc(
        "P:{<jid>}:job",
        "string",
        "msgpack map: `fun`, `arg`, `tgt`, `tgt_type`, `user`, `time` (publish, epoch s); `excluded: true` "
        "for excluded functions, `too_large` for a job over `max_job_bytes` (neither is tracked)",
    ),
    KeyDoc(
        "P:{<jid>}:targets",
        "set",
        "targeted minions (merged across `new` events of the jid); a return moves the id to `returned` "
        "(SMOVE), so a pair is stored once (a replay's `new` may add a returned minion back: `returned` wins)",
    ),
    KeyDoc("P:{<jid>}:returned", "set", "minions whose return was seen"),
    KeyDoc(
        "P:{<jid>}:retry",
        "hash",
        "per minion: `q:<id>` queued at, `a:<id>` replays so far, `p:<id>` pid of the process the last replay "
        "went to, `t:<id>` when (Redis ms), `d:<id>` ack seen (ms), `j:<id>` the jid it went out under "
        "(`u:<id>`: that publish may have gone out though it failed), `k:<id>` refused (the `t:` it refused, "
        "`0` for the original publish), `r:<id>` when, `c:<id>` refusals, `e:<id>` the engine that sent the "
        "last replay, `x:<id>` final: "
        "`exhausted`/`flushed`/`interrupted`/`superseded`, `s:<id>` the jid that superseded it",
    ),
    KeyDoc(
        "P:{<jid>}:alias",
        "string",
        "on a fresh jid (from `retry`, a refused replay, or `replay_jid: new`): the original jid",
    ),
    KeyDoc(
        "P:{m:<id>}:queue",
        "zset",
        "jids the minion may be owed, scored by publish time: the replay order (id percent-encoded: `:`, `{`, "
        "`}`, spaces and non-ASCII are safe)",
    ),
    KeyDoc(
        "P:{m:<id>}:seq",
        "hash",
        "the minion's replay sequence: `proc` (pid), `born`/`started` (first/last connection of that process, "
        "ms), `owner` + `lease` (the engine serving it, Redis ms), `cur` + `wait` (replay in flight and its "
        "deadline), `acks`, `pend` + `pend_by` (a start whose pid is not known yet, and the engine that saw "
        "it), `pub` (the jid the replay in flight went out under, once published), `via` + `via_at` (the engine "
        "that saw the process's newest connection, and when: only it serves the minion)",
    ),
    KeyDoc("P:{active}:<engine>", "zset", "minions an engine is serving, scored by when to look again (Redis ms)"),
    KeyDoc("P:{active}:engines", "zset", "engines, scored by their last heartbeat (Redis ms)"),
    KeyDoc(
        "P:unswept",
        "zset",
        "every tracked jid: scored by publish time until swept, then by 10^11 + publish time (the name is "
        "historical: it is the one job index)",
    ),
    KeyDoc(
        "P:masks",
        "hash",
        "per job not swept yet: the buckets its targets' ids hash to (CRC32 mod 64) as a 64-bit mask, all "
        "set for 512+ targets; a start or a flush asks target membership only of the jobs whose mask has "
        "its minions' buckets (a job without a mask: always). The sweep deletes a job's field",
    ),
    KeyDoc("P:queues", "zset", "minions that have a queue, scored by last enqueue"),
    KeyDoc("P:stats", "hash", "counters (see `stats`)"),
    KeyDoc("P:rate", "hash", "the fleet-wide replay token bucket (TTL 1 h)"),
)


class Keys:
    """Key names; the only place they are spelled."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.unswept = f"{prefix}:unswept"
        self.queues = f"{prefix}:queues"
        self.rate = f"{prefix}:rate"
        self.stats = f"{prefix}:stats"
        self.masks = f"{prefix}:masks"
        # The engines' registry and work sets share one hash tag, so adopting a silent
        # engine's minions is one script.
        self.engines = f"{prefix}:{{active}}:engines"

    def job(self, jid: str) -> str:
        return f"{self.prefix}:{{{jid}}}:job"

    def targets(self, jid: str) -> str:
        return f"{self.prefix}:{{{jid}}}:targets"

    def returned(self, jid: str) -> str:
        return f"{self.prefix}:{{{jid}}}:returned"

    def retry(self, jid: str) -> str:
        return f"{self.prefix}:{{{jid}}}:retry"

    def alias(self, jid: str) -> str:
        return f"{self.prefix}:{{{jid}}}:alias"

    def _minion(self, minion: str) -> str:
        # Percent-encoding keeps ':', '{', '}', spaces and non-ASCII out of key structure;
        # the minion's keys share one hash tag, so its sequence and queue move together.
        return f"{self.prefix}:{{m:{quote(minion, safe='')}}}"

    def queue(self, minion: str) -> str:
        return f"{self._minion(minion)}:queue"

    def seq(self, minion: str) -> str:
        return f"{self._minion(minion)}:seq"

    def active(self, engine: str) -> str:
        return f"{self.prefix}:{{active}}:{quote(engine, safe='')}"
