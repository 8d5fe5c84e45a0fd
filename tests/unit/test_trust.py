"""Nothing a minion puts on the master's event bus is taken as the master's word."""

from conftest import JID, T0, new_event, ret_event
from salt_job_retry.replay import EngineLoop
from test_replay import (
    OLDER,
    loop_for,
    replay_ret,
    replaying_a_state_run,
    salt_stores,
    start_event,
    startup_refusal,
    state,
)


def forged(event, sender="gamma"):
    """The event as another minion's event.send puts it on the bus (same tag, body of its choice)."""
    return {"tag": event["tag"], "data": {**event["data"], "cmd": "_minion_event", "id": sender}}


def test_a_job_on_the_bus_is_never_recorded_or_replayed(h):
    job = new_event(minions=["beta"], fun="cmd.run", arg=["touch /tmp/pwned"])
    loop, _, _ = loop_for(h, [job, forged(job), start_event("beta", when=T0 + 5)], recorder=h.recorder)
    h.recorder.record([job, forged(job)])  # event_return sees the bus too
    loop.step()
    loop.step()
    assert h.published == [] and h.store.job(JID) is None


def test_a_return_on_the_bus_wakes_but_does_not_settle_the_replay_in_flight(h):
    h.record(new_event(jid=OLDER, minions=["beta"], when=T0), new_event(minions=["beta"], when=T0 + 1))
    loop, clock, _ = loop_for(h, [start_event("beta", when=T0 + 2)], recorder=h.recorder)
    loop.step()
    assert h.published == [("beta", OLDER, "cmd.run", 1)]
    loop.feed.events.append(forged(replay_ret("beta", OLDER)))  # gamma says beta returned OLDER
    loop.feed.events.append(replay_ret("beta", OLDER))  # or fires the genuine-looking body
    for _ in range(20):
        clock[0] += 1
        h.clock.advance(1)
        loop.step()
    assert h.published == [("beta", OLDER, "cmd.run", 1)]  # JID waits for OLDER's real return
    assert state(h, OLDER)["state"] == "replayed"


def test_a_return_stored_just_after_its_bus_event_moves_the_sequence_within_a_second(h):
    h.record(new_event(jid=OLDER, minions=["beta"], when=T0), new_event(minions=["beta"], when=T0 + 1))
    loop, clock, _ = loop_for(h, [start_event("beta", when=T0 + 2)], recorder=h.recorder)
    loop.step()
    ret = replay_ret("beta", OLDER)
    loop.feed.events.append(ret)  # Salt fires the return event first ...
    loop.step()  # ... the engine looks before store_job handed it to the job cache
    assert len(h.published) == 1
    h.record(ret)  # ... now it is stored
    for _ in range(4):
        clock[0] += 0.25
        h.clock.advance(0.25)
        loop.step()
    assert h.published == [("beta", OLDER, "cmd.run", 1), ("beta", JID, "cmd.run", 1)]


def test_a_refused_run_of_a_command_sent_as_the_minions_own_is_not_owed(h):
    loop, clock = replaying_a_state_run(h)
    own = "20261122050899000002"
    refusal = startup_refusal("beta", OLDER, jid=own)
    refusal["data"].update(fun="state.single", fun_args=["cmd.run", "name=touch /tmp/pwned"])
    salt_stores(h, loop, refusal)
    loop.step()
    clock[0] += EngineLoop.MINION_RUN_AFTER + 1
    h.clock.advance(EngineLoop.MINION_RUN_AFTER + 1)
    loop.step()
    assert h.store.job(own) is None
    assert [p[2] for p in h.published] == ["state.apply"]


def test_a_refused_highstate_of_the_minions_own_is_still_owed(h):
    loop, clock = replaying_a_state_run(h)
    own = "20261122050899000003"
    salt_stores(h, loop, startup_refusal("beta", OLDER, jid=own))
    loop.step()
    clock[0] += EngineLoop.MINION_RUN_AFTER + 1
    h.clock.advance(EngineLoop.MINION_RUN_AFTER + 1)
    loop.step()
    assert h.store.job(own)["fun"] == "state.highstate"


def test_a_start_only_the_returner_saw_is_served_after_the_sweep(h):
    # The engine was restarting (or its subscriber fell behind) when beta started: only the
    # returner's event_return got salt/minion/beta/start. Found by the simulation (F1, seed 87).
    h.recorder.engine = "e1"
    h.store.heartbeat("e1", 30_000)  # it ran until a moment ago
    h.record(new_event(minions=["alpha", "beta"], when=T0))  # beta is down
    h.clock.advance(2)
    assert h.recorder.record([start_event("beta", when=T0 + 2)]) == 1
    loop, clock, _ = loop_for(h, [], recorder=h.recorder, interval=2)
    for _ in range(10):  # the sweep (timeout 5 s) queues JID for beta and wakes its engine
        clock[0] += 1
        h.clock.advance(1)
        loop.step()
    assert h.published == [("beta", JID, "cmd.run", 1)]


def test_a_start_is_not_noted_where_there_is_no_engine(h):
    assert h.recorder.engine is None  # a minion's --return job_retry, or a test without a master
    assert h.recorder.record([start_event("beta")]) == 0


def test_after_redis_failed_the_job_cache_spools_without_waiting_on_it(h, monkeypatch):
    # A Redis that hangs would hold every publish and every return for socket_timeout.
    h.recorder.redis_retry_after = 60
    h.server.connected = False
    h.record(new_event(minions=["beta"]))
    tries = []
    monkeypatch.setattr(h.store, "ensure_clock", lambda: tries.append(1))
    h.server.connected = True
    h.record(ret_event("beta"))  # Redis is back, but the pause has not run out: spooled
    assert tries == [] and h.store.job(JID) is None
    h.recorder._redis_down_until = 0  # the pause ran out
    monkeypatch.undo()
    h.record(ret_event("beta"))
    assert state(h, JID)["state"] == "returned"


def test_a_start_is_not_noted_for_an_engine_that_does_not_run(h):
    # event_return on a master without the engine (not configured, or not loaded yet): noting the
    # start for it would hold the minion away from the engines that run. Review finding 4.
    h.recorder.engine = "ghost"
    assert h.recorder.record([start_event("beta")]) == 0
    assert h.store.sequence("beta") == {}


def test_a_return_written_by_one_worker_waits_for_the_job_another_worker_spooled(make):
    # Salt's workers share the spool: a job one of them spooled (Redis paused for it) must be
    # written before a return another one records. Review 2, finding 2.
    one, two = make(), make()  # two worker processes of one master, one Redis, one spool dir
    one.recorder.redis_retry_after = 60
    one.server.connected = False
    one.record(new_event(minions=["beta"]))  # worker one: Redis blipped; the job is spooled
    one.server.connected = True
    one.record(new_event(jid="20261122050816460009", minions=["alpha"]))  # still paused: spooled too
    assert two.record(ret_event("beta")) == 1  # worker two drains the spool first
    assert state(two, JID)["state"] == "returned"
