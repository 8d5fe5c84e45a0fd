"""
A 10,000-minion fleet on a real redis-server, driven through the real returner,
engine and runner code with synthetic Salt events (no daemons at this size):
20 jobs, 1,000 minions down at publish, all of them back in one burst. Each
minion gets its 20 jobs one at a time (its "return" is fed back to the engine).
"""

import datetime
import time
from collections import Counter

from salt_job_retry import commands, config, redis_io, store
from salt_job_retry.recorder import Recorder
from salt_job_retry.replay import EngineLoop, Replayer
from salt_job_retry.spool import Spool

FLEET, JOBS, DOWN, RATE = 10_000, 20, 1_000, 5_000


def stamp(seconds_ago=0.0):
    return (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds_ago)).isoformat()


def test_fleet_of_10000_comes_back_in_a_burst(redis_only, tmp_path, capsys):
    raw = {"enabled": True, "redis_url": f"redis://127.0.0.1:{redis_only.redis_port}/0", "key_prefix": "fleet"}
    conf = config.load({**raw, "timeout": 30, "max_replays_per_second": RATE})
    s = store.Store(redis_io.connect(conf), conf)
    recorder = Recorder(s, conf, Spool(str(tmp_path / "spool"), 1 << 20))
    fleet = [f"node-{i:05d}" for i in range(FLEET)]
    down, up = fleet[:DOWN], fleet[DOWN:]
    jids = [f"2026112209{i:010d}" for i in range(JOBS)]

    began = time.monotonic()
    for jid in jids:  # published an hour ago; the up minions returned, the down ones did not
        base = {"jid": jid, "fun": "state.apply", "arg": ["web"], "tgt": "*", "tgt_type": "glob", "user": "root"}
        recorder.record(
            [{"tag": f"salt/job/{jid}/new", "data": {**base, "minions": fleet, "_stamp": stamp(3600)}}], trusted=True
        )
        for i in range(0, len(up), 100):
            rets = [
                {"tag": f"salt/job/{jid}/ret/{m}", "data": {"id": m, "fun": "state.apply"}} for m in up[i : i + 100]
            ]
            recorder.record(rets, trusted=True)
    recorded = time.monotonic() - began

    published = []
    bus = [{"tag": f"salt/minion/{m}/start", "data": {"id": m, "_stamp": stamp(), "grains": {"pid": 7}}} for m in down]

    def publish(minion, jid, job, attempt, extra=None):  # the minion runs it and returns at once
        published.append((minion, jid, time.monotonic()))
        ret = {"tag": f"salt/job/{jid}/ret/{minion}", "data": {"id": minion, "fun": "state.apply"}}
        recorder.record([ret], trusted=True)  # Salt's store_job: the job cache (us) ...
        bus.append(ret)  # ... and the bus event that wakes the engine

    replayer = Replayer(s, conf, publish, lambda d, t: None, engine="fleet-engine")
    loop = EngineLoop(replayer, lambda wait: bus.pop(0) if bus else None, interval=3600, recorder=recorder)
    began = time.monotonic()
    while len(published) < DOWN * JOBS and time.monotonic() - began < 120:
        loop.step()
    drained = time.monotonic() - began
    while bus:  # the last returns
        loop.step()

    pairs = Counter((m, j) for m, j, _ in published)
    times = sorted(t for _, _, t in published)
    busiest = max(sum(1 for t in times[i : i + 2 * RATE] if t < times[i] + 1) for i in range(0, len(times), 500))
    with capsys.disabled():
        print(
            f"\nfleet: {FLEET} minions x {JOBS} jobs recorded in {recorded:.1f} s; {DOWN} back at once: "
            f"{len(pairs)} replays drained in {drained:.1f} s (limit {RATE}/s, busiest second {busiest})"
        )
    assert set(pairs) == {(m, j) for m in down for j in jids}  # every owed pair ...
    assert max(pairs.values()) == 1  # ... exactly once
    assert not {m for m, _ in pairs} & set(up)  # nothing that returned
    assert busiest <= RATE * 1.1 + RATE / 10
    assert drained >= (DOWN * JOBS - RATE / 10) / RATE * 0.9
    env = commands.Env({"sock_dir": "/nonexistent"}, conf, s)
    assert commands.status(env, jids[0])["summary"] == {"returned": FLEET}
    assert commands.pending(env) == {}
