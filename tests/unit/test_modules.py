"""The three loader modules are thin: they hand Salt's dunders to the core."""

import importlib.util
import logging

import fakeredis
import pytest
from conftest import JID, new_event, ret_event
from salt_job_retry import saltside

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


def test_returner_records_and_never_raises(server):
    opts, context = enabled_context(server)
    returner = load("returners", opts=opts, context=context, salt={})
    returner.event_return([new_event(minions=["alpha"])])
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
    returner = load("returners", opts={}, context=context, salt=config_get)
    returner.event_return([new_event(minions=["alpha"])])
    assert fakeredis.FakeRedis(server=server).exists(f"job_retry:{{{JID}}}:targets")
