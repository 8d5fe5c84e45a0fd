"""The three loader modules are thin: they hand Salt's dunders to the core."""

import importlib.util
import logging
import time

import fakeredis
import pytest
from conftest import JID, new_event, ret_event
from salt_job_retry import saltside
from salt_job_retry.keys import bucket_of

from tests.conftest import REPO


def load(kind, **dunders):
    spec = importlib.util.spec_from_file_location(f"jr_{kind}", REPO / f"_{kind}" / "job_retry.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, value in dunders.items():
        setattr(module, f"__{name}__", value)
    return module


def enabled_context(server, **options):
    opts = {"job_retry": {"enabled": True, **options}, "sock_dir": "/nonexistent"}
    conf = saltside.load_config(opts)
    return opts, {saltside.CONTEXT_KEY: {saltside.client_ident(conf): fakeredis.FakeRedis(server=server)}}


@pytest.mark.parametrize("kind", ["runners", "returners", "engines"])
def test_virtual_name(kind):
    module = load(kind, opts={"utils_dirs": []})
    assert module.__virtualname__ == "job_retry"
    assert module.__virtual__() == "job_retry"
    assert ".. code-block:: yaml" in module.__doc__


def test_runner_passes_through_and_reports_disabled():
    runner = load("runners", opts={}, context={})
    assert runner.pending()["retcode"] == 1
    assert "disabled" in runner.status(JID)["error"]


def test_runner_on_enabled_store(server):
    opts, context = enabled_context(server)
    runner = load("runners", opts=opts, context=context)
    assert runner.status(JID) == {
        "error": f"unknown jid {JID}: nothing recorded (never seen, or expired after ttl)",
        "retcode": 1,
    }
    assert runner.enqueue() == {"queued": {}, "count": 0}


class FakeJobCache(dict):
    """Salt's job cache behind the returner: every call is noted, loads are kept."""

    def __init__(self):
        super().__init__()
        self.calls, self.loads = [], {}
        for name in ("prep_jid", "returner", "save_minions", "get_jid", "get_jids", "clean_old_jobs"):
            self[f"local_cache.{name}"] = self._noting(name)
        self["local_cache.save_load"] = self._save_load
        self["local_cache.get_load"] = lambda jid: self.loads.get(jid, {})

    def _noting(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs)) or name

    def _save_load(self, jid, load, minions=None):
        self.calls.append(("save_load", (jid, load, minions), {}))
        self.loads[jid] = load


def master_returner(server):
    opts, context = enabled_context(server)
    opts["__role"] = "master"
    cache = FakeJobCache()
    context["job_retry.job_cache"] = ("local_cache", cache)
    return load("returners", opts=opts, context=context, salt={}), cache


def test_returner_records_and_never_raises(server):
    opts, context = enabled_context(server)
    opts["__role"] = "master"
    context["job_retry.job_cache"] = ("local_cache", FakeJobCache())
    returner = load("returners", opts=opts, context=context, salt={})
    returner.save_load(JID, new_event(minions=["alpha"])["data"], ["alpha"])  # the master publishing
    returner.returner(ret_event("alpha")["data"])
    returner.event_return([None, {"tag": 5}, "junk"])
    returner.event_return(None)
    returner.returner("not a dict")
    client = fakeredis.FakeRedis(server=server)
    assert client.smembers(f"job_retry:{{{JID}}}:returned") == {b"alpha"}


def test_returner_disabled_records_nothing(server, caplog):
    caplog.set_level(logging.INFO)
    returner = load("returners", opts={"job_retry": {"enabled": False}}, context={}, salt={})
    returner.event_return([new_event()])
    assert "recording nothing" in caplog.text


def test_returner_bad_config_logs_once(caplog):
    returner = load("returners", opts={"job_retry": {"enabled": True, "ttl": "week"}}, context={}, salt={})
    returner.event_return([new_event()])
    returner.event_return([new_event()])
    assert caplog.text.count("job_retry:ttl: expected integer >= 60") == 1


def test_returner_reads_config_get_where_opts_lack_it(server):
    _, context = enabled_context(server)
    config_get = {"config.get": lambda key: {"enabled": True} if key == "job_retry" else None}
    master, _ = master_returner(server)
    master.save_load(JID, new_event(minions=["alpha"])["data"], ["alpha"])
    returner = load("returners", opts={}, context=context, salt=config_get)  # a minion's --return job_retry
    returner.returner(ret_event("alpha")["data"])
    assert fakeredis.FakeRedis(server=server).exists(f"job_retry:{{{JID}}}:returned")


def test_job_cache_records_only_the_masters_publish(server):
    returner, cache = master_returner(server)
    client = fakeredis.FakeRedis(server=server)
    load_ = {"fun": "cmd.run", "arg": ["id"], "tgt": "alpha", "tgt_type": "glob", "user": "root", "jid": JID}
    returner.save_load(JID, load_)  # _syndic_return / a minion's `req` return: no target list
    assert not client.exists(f"job_retry:{{{JID}}}:job") and cache.loads[JID] == load_
    returner.save_load(JID, load_, ["alpha"])  # ClearFuncs._prep_pub: the master publishing
    assert client.smembers(f"job_retry:{{{JID}}}:targets") == {b"alpha"}
    assert [c[0] for c in cache.calls] == ["save_load", "save_load"]


def test_job_cache_keeps_a_saved_load_as_salts_store_job_does_for_local_cache(server):
    returner, cache = master_returner(server)
    returner.save_load(JID, {"fun": "state.apply", "tgt": "*"}, ["alpha"])
    returner.save_load(JID, {"fun": "cmd.run", "id": "alpha", "return": "x"})  # store_job, per return
    assert cache.loads[JID] == {"fun": "state.apply", "tgt": "*"}


def test_job_cache_records_a_stored_return_and_hands_it_on(server):
    returner, cache = master_returner(server)
    returner.save_load(JID, {"fun": "cmd.run", "arg": [], "tgt": "alpha", "tgt_type": "glob"}, ["alpha"])
    assert returner.returner(ret_event("alpha")["data"]) == "returner"
    assert fakeredis.FakeRedis(server=server).smembers(f"job_retry:{{{JID}}}:returned") == {b"alpha"}
    assert returner.get_jid(JID) == "get_jid" and returner.prep_jid(passed_jid=JID) == "prep_jid"
    assert returner.save_minions(JID, ["beta"], syndic_id="beta") == "save_minions"
    assert not fakeredis.FakeRedis(server=server).sismember(f"job_retry:{{{JID}}}:targets", "beta")


def test_job_cache_keeps_salts_history_when_job_retry_is_disabled():
    cache = FakeJobCache()
    opts = {"job_retry": {"enabled": False}, "__role": "master"}
    returner = load("returners", opts=opts, context={"job_retry.job_cache": ("local_cache", cache)}, salt={})
    returner.save_load(JID, {"fun": "test.ping"}, ["alpha"])
    returner.returner(ret_event("alpha")["data"])
    assert [c[0] for c in cache.calls] == ["save_load", "returner"]


def test_job_cache_refuses_itself_as_the_cache_behind_it(caplog):
    returner = load("returners", opts={"job_retry": {"job_cache": "job_retry"}}, context={}, salt={})
    assert returner._cache_name() == "local_cache" and "not a usable job cache" in caplog.text


def test_event_return_ignores_jobs_and_returns_on_the_bus_and_names_the_sender(server, caplog):
    opts, context = enabled_context(server)
    returner = load("returners", opts=opts, context=context, salt={})
    forged = new_event(minions=["alpha"], fun="cmd.run", arg=["touch /tmp/pwned"])
    sent_by_beta = {"tag": forged["tag"], "data": {**forged["data"], "cmd": "_minion_event", "id": "beta"}}
    batched = forged  # a batched event with pretag "": the body is exactly what beta chose
    returner.event_return([sent_by_beta, batched, ret_event("alpha")])
    client = fakeredis.FakeRedis(server=server)
    assert not client.exists(f"job_retry:{{{JID}}}:job", f"job_retry:{{{JID}}}:returned")
    assert f"ignored salt/job/{JID}/new fired by minion 'beta'" in caplog.text


def test_job_cache_stamps_a_job_with_its_publish_time_even_when_it_is_spooled(server, tmp_path):
    returner, _ = master_returner(server)
    returner.__opts__["job_retry"]["spool_dir"] = str(tmp_path)
    server.connected = False  # Redis is down at publish
    before = time.time()
    returner.save_load(JID, {"fun": "test.ping", "arg": [], "tgt": "*", "tgt_type": "glob"}, ["alpha"])
    server.connected = True
    time.sleep(0.5)  # Redis is back; the spool is written later
    recorder = returner.__context__["job_retry.recorder"]
    assert recorder.flush_spool()
    published = recorder.store.job(JID)["time"]
    assert before - 1 < published < before + 0.3


def test_job_cache_marks_the_engines_own_replay_as_one(server):
    returner, _ = master_returner(server)
    load_ = {"fun": "cmd.run", "arg": ["id"], "tgt": ["alpha"], "tgt_type": "list", "metadata": {"job_retry": {}}}
    returner.save_load(JID, load_, ["alpha"])
    assert not fakeredis.FakeRedis(server=server).hexists("job_retry:masks", JID)
    returner.save_load(JID, {**load_, "metadata": {}}, ["alpha"])  # an operator's publish of it
    assert fakeredis.FakeRedis(server=server).hget("job_retry:masks", JID) == str(1 << bucket_of("alpha")).encode()
