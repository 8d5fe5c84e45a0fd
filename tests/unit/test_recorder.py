import redis
from conftest import JID, T0, new_event, ret_event
from salt_job_retry.lua import SHAS

OTHER = "20261122050816467999"


class CountingClient:
    """Proxy that counts round trips: pipelines executed and direct commands."""

    def __init__(self, client):
        self._client = client
        self.round_trips = 0

    def pipeline(self, *args, **kwargs):
        pipe = self._client.pipeline(*args, **kwargs)
        original = pipe.execute

        def execute(*a, **kw):
            self.round_trips += 1
            return original(*a, **kw)

        pipe.execute = execute
        return pipe

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if callable(attr):

            def call(*a, **kw):
                self.round_trips += 1
                return attr(*a, **kw)

            return call
        return attr


def test_new_event_records_job_and_targets_with_ttl(h):
    assert h.record(new_event(minions=["alpha", "beta"])) == 1
    job = h.store.job(JID)
    assert job["fun"] == "cmd.run"
    assert job["arg"] == ["echo hi", {"__kwarg__": True, "template": "jinja"}]
    assert job["tgt"] == "*" and job["tgt_type"] == "glob" and job["user"] == "root"
    assert abs(job["time"] - T0) < 1e-3
    assert h.redis.smembers(h.store.keys.targets(JID)) == {b"alpha", b"beta"}
    for key in h.redis.scan_iter():
        assert 0 < h.redis.ttl(key) <= h.conf.ttl, key


def test_batch_of_events_is_one_round_trip(h):
    h.record(new_event(jid=OTHER))  # warm Redis' script cache
    counting = CountingClient(h.redis)
    h.store.client = counting
    events = [new_event(jid=f"2026112205081646{i:04d}", minions=[f"m{j}" for j in range(20)]) for i in range(50)]
    events += [ret_event(f"m{j}", jid=f"2026112205081646{i:04d}") for i in range(50) for j in range(20)]
    assert h.record(*events) == 1050
    assert counting.round_trips == 1
    assert h.redis.scard(h.store.keys.returned("20261122050816460007")) == 20


def test_cold_script_cache_costs_two_extra_round_trips(h):
    counting = CountingClient(h.redis)
    h.store.client = counting
    h.record(new_event())
    assert counting.round_trips == 3  # EVALSHA -> NOSCRIPT, load all scripts, resend


def test_single_return_is_one_round_trip(h):
    h.record(new_event())
    counting = CountingClient(h.redis)
    h.store.client = counting
    h.record(ret_event("alpha"))
    assert counting.round_trips == 1


def test_second_new_event_merges_and_keeps_original(h):
    h.record(new_event(minions=["alpha", "beta"]))
    replay_new = new_event(minions=["beta"], when=T0 + 60)
    replay_new["data"].update(tgt=["beta"], tgt_type="list")
    h.record(replay_new)
    assert h.redis.smembers(h.store.keys.targets(JID)) == {b"alpha", b"beta"}
    job = h.store.job(JID)
    assert job["tgt"] == "*" and abs(job["time"] - T0) < 1e-3


def test_return_marks_only_targeted_minions(h):
    h.record(new_event(minions=["alpha"]))
    h.record(ret_event("alpha"), ret_event("intruder"))
    assert h.redis.smembers(h.store.keys.returned(JID)) == {b"alpha"}


def test_return_for_unknown_jid_writes_nothing(h):
    h.record(ret_event("alpha", jid=OTHER))  # e.g. a scheduled job on the minion
    assert list(h.redis.scan_iter()) == []


def test_excluded_functions_are_marked_but_never_targeted(h):
    h.record(new_event(fun="saltutil.find_job", arg=[JID]), ret_event("alpha", fun="saltutil.find_job"))
    assert h.store.job(JID)["excluded"] is True
    assert not h.redis.exists(h.store.keys.targets(JID))
    assert not h.redis.exists(h.store.keys.unswept)


def test_include_functions_limits_what_is_recorded(make):
    h = make(include_functions=["state.*"])
    h.record(new_event(fun="cmd.run"), new_event(jid=OTHER, fun="state.apply", arg=[]))
    assert h.store.job(JID)["excluded"] is True
    assert h.redis.scard(h.store.keys.targets(OTHER)) == 2


def test_compound_job_is_recorded_if_any_function_is_wanted(h):
    h.record(new_event(fun=["test.ping", "cmd.run"], arg=[[], ["echo hi"]]))
    assert h.redis.scard(h.store.keys.targets(JID)) == 2


def test_malformed_events_are_skipped_not_fatal(h, caplog):
    bad = [
        None,
        "salt/job/x/new",
        {"tag": None, "data": {}},
        {"tag": "salt/job/x/new", "data": "not a dict"},
        {"tag": "salt/job/bad jid!/new", "data": {"minions": ["a"], "fun": "cmd.run"}},
        {"tag": f"salt/job/{OTHER}/new", "data": {"minions": "alpha", "fun": "cmd.run"}},
        {"tag": f"salt/job/{OTHER}/new", "data": {"minions": ["alpha"]}},
        {"tag": f"salt/job/{JID}/ret/bad\nid", "data": {"fun": "cmd.run"}},
        {"tag": "salt/auth", "data": {"id": "alpha"}},
    ]
    assert h.record(*bad, new_event()) == 1
    assert h.redis.scard(h.store.keys.targets(JID)) == 2
    assert h.recorder.record(None, trusted=True) == 0


def test_odd_minion_ids_round_trip(h):
    ids = ["web:1", "db{2}", "cache*", "has space", "münchen-01", "ü{}:* x"]
    h.record(new_event(minions=ids))
    h.record(*[ret_event(m) for m in ids[:2]])
    h.clock.advance(10)
    queued = {m for _, m, _ in h.store.sweep()}
    assert queued == set(ids[2:])
    assert set(h.store.pending(ids)) == set(ids)
    for m in ids[2:]:
        assert [e["jid"] for e in h.store.pending([m])[m]] == [JID]


def test_redis_down_spools_events_and_writes_them_later(h, caplog):
    h.server.connected = False
    assert h.record(new_event()) == 0
    assert h.record(ret_event("alpha"), {"tag": "salt/auth", "data": {}}) == 0
    assert h.recorder.spool.has_data()
    assert "spooled 1 event(s)" in caplog.text
    h.server.connected = True
    assert h.record() == 0  # the spool is written first, in order: new before ret
    assert h.redis.smembers(h.store.keys.returned(JID)) == {b"alpha"}
    assert not h.recorder.spool.has_data()


def test_spool_survives_a_new_process(h, make):
    h.server.connected = False
    h.record(new_event(minions=["beta"]))
    h.server.connected = True
    restarted = make()  # a master restart: a fresh Recorder on the same spool dir
    assert restarted.recorder.spool.has_data()
    restarted.record(ret_event("alpha", jid=OTHER))
    assert restarted.redis.smembers(restarted.store.keys.targets(JID)) == {b"beta"}


def test_spool_is_bounded(make, caplog):
    h = make(spool_max_bytes=600)
    h.server.connected = False
    h.record(*[new_event(jid=f"2026112205081646{i:04d}") for i in range(10)])
    assert 0 < h.recorder.spool.dropped < 10
    assert "is full" in caplog.text
    h.server.connected = True
    h.record()
    assert h.redis.exists(h.store.keys.job("20261122050816460000"))


def test_damaged_spool_tail_is_dropped_not_fatal(h, caplog):
    h.server.connected = False
    h.record(new_event())
    with open(h.recorder.spool.path, "ab") as spool:
        spool.write(b"\x92\xa3ab")  # a record cut short by a crash
    h.server.connected = True
    h.record()
    assert h.store.job(JID) is not None
    assert "damaged record" in caplog.text


def test_non_connection_errors_do_not_escape(h, monkeypatch, caplog):
    def boom(self):
        raise redis.exceptions.ResponseError("OOM command not allowed")

    monkeypatch.setattr("salt_job_retry.redis_io.Batch.execute", boom)
    assert h.record(new_event()) == 0
    assert "could not record" in caplog.text
    assert h.recorder.spool.has_data()


def test_delivery_ack_is_recorded_for_targets_only(h):
    h.record(new_event(minions=["beta"]))
    ack = {"tag": f"salt/job/{JID}/start/beta", "data": {"id": "beta", "data": {"jid": JID, "fun": "cmd.run"}}}
    stranger = {"tag": f"salt/job/{JID}/start/gamma", "data": {"id": "gamma", "data": {"jid": JID, "fun": "cmd.run"}}}
    assert h.record(ack, stranger) == 2
    fields = h.redis.hgetall(h.store.keys.retry(JID))
    assert list(fields) == [b"d:beta"]


def test_oversized_arguments_are_not_recorded(make, caplog):
    h = make(max_job_bytes=2048)
    h.record(new_event(arg=["x" * 5000]))
    assert not h.redis.exists(h.store.keys.targets(JID))
    assert h.store.job(JID)["too_large"] > 5000
    assert "over max_job_bytes (2048)" in caplog.text


def test_lost_script_cache_is_reloaded(h):
    h.record(new_event())
    h.redis.script_flush()
    assert h.redis.script_exists(SHAS["record_return"]) == [False]
    h.record(ret_event("alpha"))
    assert h.redis.smembers(h.store.keys.returned(JID)) == {b"alpha"}


def test_retry_alias_jid_is_not_tracked_and_its_return_closes_the_original(h):
    h.record(new_event(minions=["alpha", "beta"]))
    h.store.register_alias(OTHER, JID)
    h.record(new_event(jid=OTHER, minions=["beta"]))
    assert h.store.job(OTHER) is None  # no job record: never swept, claimed or listed
    h.clock.advance(60)
    assert {j for j, _, _ in h.store.sweep()} == {JID}  # the alias jid is inert
    h.record(ret_event("beta", jid=OTHER, metadata={"job_retry": {"orig_jid": JID, "attempt": 0}}))
    assert h.redis.smembers(h.store.keys.returned(JID)) == {b"beta"}


def test_error_while_draining_keeps_the_spool_and_does_not_deadlock(h, monkeypatch, caplog):
    h.server.connected = False
    h.record(new_event())
    h.server.connected = True

    def boom(self):
        raise redis.exceptions.ResponseError("CROSSSLOT Keys in request don't hash to the same slot")

    monkeypatch.setattr("salt_job_retry.redis_io.Batch.execute", boom)
    assert h.record(ret_event("alpha")) == 0  # returns (no deadlock), raises nothing
    assert h.recorder.spool.has_data()
    assert "could not write the spool" in caplog.text


def test_replays_delivery_and_return_are_announced(make):
    h = make()
    fired = []
    h.recorder.fire = lambda data, tag: fired.append(tag)
    h.record(new_event(minions=["beta"]), ret_event("alpha", jid=OTHER))
    meta = {"metadata": {"job_retry": {"attempt": 1}}}
    ack = {"tag": f"salt/job/{JID}/start/beta", "data": {"id": "beta", "data": {"jid": JID, "fun": "cmd.run", **meta}}}
    h.record(ack, ret_event("beta", **meta))
    assert fired == [f"salt/job_retry/{JID}/delivered/beta", f"salt/job_retry/{JID}/returned/beta"]
    h.record(ret_event("beta"))  # not a replay: no event
    assert len(fired) == 2


def test_a_return_moves_the_minion_out_of_targets_so_a_pair_is_stored_once(h):
    h.record(new_event(minions=["alpha", "beta"]), ret_event("alpha"))
    k = h.store.keys
    assert h.redis.smembers(k.targets(JID)) == {b"beta"}
    assert h.redis.smembers(k.returned(JID)) == {b"alpha"}
    status = h.store.status(JID)
    assert status["minions"]["alpha"]["state"] == "returned"
    assert status["minions"]["beta"]["state"] == "waiting"
    assert h.store.missing(JID) == ["beta"]
    h.record(ret_event("beta"))
    assert not h.redis.exists(k.targets(JID))  # emptied: Redis dropped it
    assert h.store.status(JID)["minions"] == {
        "alpha": {"state": "returned", "attempts": 0},
        "beta": {"state": "returned", "attempts": 0},
    }


def test_a_replay_announcement_after_the_return_does_not_make_the_minion_owed(h):
    # the original run's return is recorded before the `new` of a replay under the same jid
    h.record(new_event(minions=["alpha"]), ret_event("alpha"))
    h.record(new_event(minions=["alpha"]))  # back in targets, but it returned
    h.clock.advance(60)
    assert h.store.sweep() == []
    assert h.store.status(JID)["minions"]["alpha"]["state"] == "returned"
    assert h.serve("alpha").replayed == []


def test_the_job_index_ttl_is_renewed_once_per_batch_not_per_job(h):
    h.record(new_event(jid=OTHER))  # warm the script cache
    sent = []
    original = h.redis.execute_command

    def counting(*args, **kwargs):
        sent.append(args)
        return original(*args, **kwargs)

    pipe_factory = h.redis.pipeline

    def pipeline(*a, **kw):
        pipe = pipe_factory(*a, **kw)
        queue = pipe.execute_command

        def record(*args, **kwargs):
            sent.append(args)
            return queue(*args, **kwargs)

        pipe.execute_command = record
        return pipe

    h.redis.execute_command, h.redis.pipeline = counting, pipeline
    h.record(*[new_event(jid=f"2026112205081646{i:04d}") for i in range(10)])
    index = h.store.keys.unswept
    assert [a for a in sent if a[0] == "EXPIRE" and a[1] == index] == [("EXPIRE", index, h.conf.ttl)]
    assert 0 < h.redis.ttl(index) <= h.conf.ttl


def test_target_list_validation_keeps_every_valid_id_and_drops_the_rest():
    from salt_job_retry.recorder import MAX_MINION_ID, valid_minions

    good = ["web-1", "db 2", "ünïcode", "nbsp\xa0id", "x" * MAX_MINION_ID]
    assert valid_minions(good) == good  # \xa0 is not printable: the slow path keeps it
    bad = ["", "tab\there", "nul\x00", "y" * (MAX_MINION_ID + 1), 7, None]
    assert valid_minions(good[:2] + bad) == good[:2]
    assert valid_minions([]) == []
