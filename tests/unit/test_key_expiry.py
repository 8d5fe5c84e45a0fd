"""
Every key has a TTL, and the keys of one job expire together, after any sequence of
operations (property-style: random sequences from fixed seeds). Time passes for Redis by
ageing every key's TTL, and for the store's clock alike.
"""

import random

import pytest
from conftest import T0, new_event, ret_event
from salt_job_retry import commands

MINIONS = ("alpha", "beta", "gamma")
JIDS = tuple(f"2026112205081640000{i}" for i in range(1, 6))
TTL = 3600


def age(h, seconds):
    """Let `seconds` pass: every key's TTL shrinks (expiring the due ones), and the clock moves."""
    for key in h.redis.scan_iter(count=1000):
        left = h.redis.pttl(key)
        if left > seconds * 1000:
            h.redis.pexpire(key, left - int(seconds * 1000))
        elif left > 0:
            h.redis.delete(key)
    h.clock.advance(seconds)


def check(h, returned):
    keys = list(h.redis.scan_iter(count=1000))
    for key in keys:
        assert h.redis.ttl(key) > 0, f"{key!r} has no TTL"
    k = h.store.keys
    for jid in JIDS:
        job_left = h.redis.pttl(k.job(jid))
        if job_left <= 0:
            continue
        for part in (k.targets(jid), k.returned(jid), k.retry(jid)):
            left = h.redis.pttl(part)
            assert left == -2 or left >= job_left - 1000, f"{part} expires {job_left - left} ms before its job"
    for minion, jid in returned:  # whatever expired, a returned pair is never sent again
        assert (minion, jid) not in h.sent_after_return


def env_for(h):
    env = commands.Env({}, h.conf, h.store)
    env.publish, env.fire = h.publish, h.fire
    env.new_jid = lambda: next(h.fresh_jids)
    env.known_minions = lambda: set(MINIONS)
    env.probe = lambda minions, jid, timeout: (set(minions), set())
    return env


def run_ops(h, rng, steps):
    returned: set[tuple[str, str]] = set()
    h.sent_after_return = set()
    env = env_for(h)
    published_at = {}
    for _ in range(steps):
        op = rng.choice(("new", "new", "again", "ret", "ret", "sweep", "start", "drive", "age", "flush", "retry"))
        jid, minion = rng.choice(JIDS), rng.choice(MINIONS)
        before = len(h.published)
        if op == "new":
            targets = rng.sample(MINIONS, rng.randint(1, 3))
            published_at.setdefault(jid, h.clock.now)
            h.record(new_event(jid=jid, minions=targets, when=published_at[jid]))
        elif op == "again" and jid in published_at:  # Salt announces a replay under its own jid
            h.record(new_event(jid=jid, minions=[minion], when=h.clock.now))
        elif op == "ret":
            h.record(ret_event(minion, jid=jid))
            if h.redis.sismember(h.store.keys.returned(jid), minion):  # a target's return, after its `new`
                returned.add((minion, jid))
        elif op == "sweep":
            h.replayer.sweep()
        elif op == "start":
            h.start(minion, str(next(h.pids)))
            h.drive(minion)
        elif op == "drive":
            h.drive(minion)
        elif op == "age":
            age(h, rng.choice((1, 10, 300, TTL // 3)))
            returned = {(m, j) for m, j in returned if h.redis.exists(h.store.keys.job(j))}  # the job expired
        elif op == "flush":
            h.store.flush(minion)
        elif op == "retry" and h.store.job(jid):
            commands.retry(env, jid)
        for m, sent_jid, _, _ in h.published[before:]:
            orig = h.redis.get(h.store.keys.alias(sent_jid))
            if (m, orig.decode() if orig else sent_jid) in returned:
                h.sent_after_return.add((m, sent_jid))
        check(h, returned)


@pytest.mark.parametrize("seed", range(30))
def test_every_key_has_a_ttl_and_a_jobs_keys_expire_together(make, seed):
    h = make(ttl=TTL, timeout=5, replay_wait=30)
    h.clock.now = T0
    run_ops(h, random.Random(seed), 60)


def test_a_replay_announced_under_its_own_jid_renews_the_returned_set_too(make):
    h = make(ttl=TTL, timeout=5)
    h.record(new_event(minions=["alpha", "beta"]), ret_event("alpha"))
    age(h, TTL // 2)
    h.record(new_event(minions=["beta"], when=h.clock.now))  # the replay's `new`
    age(h, TTL // 2 + 10)  # the first writes would be gone now
    h.replayer.sweep()
    assert h.store.status(new_event()["data"]["jid"])["minions"]["alpha"]["state"] == "returned"
    h.start("alpha")
    assert h.drive("alpha") == []
