"""
The replay scenario on a real 3-node Redis Cluster and on a real Sentinel
(master + replica) whose master is killed mid-run. Real returner, engine and
runner code; synthetic Salt events; processes on 127.0.0.1, stopped by pid.
"""

import datetime
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from salt_job_retry import commands, config, redis_io, store
from salt_job_retry.recorder import Recorder
from salt_job_retry.replay import EngineLoop, Replayer
from salt_job_retry.spool import Spool

from tests.saltlab import _free_ports


class Servers:
    """redis-server processes under one dir, each in its own process group."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, conf: str, *extra: str) -> subprocess.Popen:
        path = self.root / f"{name}.conf"
        path.write_text(conf)
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(["redis-server", str(path), *extra], stdout=log, stderr=log, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait(check, timeout=20.0, what="condition", log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def stamp(seconds_ago=0.0):
    return (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=seconds_ago)).isoformat()


def new_event(jid, minions, seconds_ago=3600):
    data = {"jid": jid, "fun": "state.apply", "arg": ["web"], "tgt": "*", "tgt_type": "glob", "user": "root"}
    return {"tag": f"salt/job/{jid}/new", "data": {**data, "minions": minions, "_stamp": stamp(seconds_ago)}}


def ret_event(jid, minion):
    return {"tag": f"salt/job/{jid}/ret/{minion}", "data": {"id": minion, "fun": "state.apply"}}


class Engine:
    def __init__(self, conf, spool_dir):
        self.conf = conf
        self.store = store.Store(redis_io.connect(conf), conf)
        self.recorder = Recorder(self.store, conf, Spool(str(spool_dir), 1 << 22))
        self.published = []
        replayer = Replayer(self.store, conf, self.publish, lambda d, t: None, engine="e1")
        self.feed = []
        self.loop = EngineLoop(replayer, lambda wait: self.feed.pop(0) if self.feed else None, 3600, self.recorder)

    def publish(self, minion, jid, job, attempt, extra=None):
        """The minion runs the replay at once: Salt's store_job hands its return to the job cache (us),
        and puts it on the bus."""
        self.published.append((minion, jid))
        self.recorder.record([ret_event(jid, minion)], trusted=True)
        self.feed.append(ret_event(jid, minion))

    def start(self, minion):
        data = {"id": minion, "_stamp": stamp(), "grains": {"pid": 100}}  # start_event_grains: [pid]
        self.feed.append({"tag": f"salt/minion/{minion}/start", "data": data})

    def run_until(self, check, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not check() and time.monotonic() < deadline:
            self.loop.step()
        return check()


@pytest.fixture
def cluster(tmp_path):
    servers = Servers(tmp_path)
    ports = [_free_ports(1) for _ in range(3)]
    # the bus port explicitly, from the same free range: the default (port + 10000) can land in the
    # kernel's ephemeral range and be taken by some connection
    buses = [_free_ports(1) for _ in range(3)]
    try:
        for port, bus in zip(ports, buses, strict=True):
            servers.start(
                f"node{port}",
                f"bind 127.0.0.1\nport {port}\ncluster-port {bus}\ncluster-enabled yes\n"
                f"cluster-config-file nodes-{port}.conf\n"
                f"cluster-node-timeout 2000\nsave ''\nappendonly no\ndir {tmp_path}\n",
            )
        for port in ports:
            log = tmp_path / f"node{port}.log"
            wait(lambda p=port: redis.Redis(port=p).ping(), what=f"cluster node {port}", log=log)
        nodes = [f"127.0.0.1:{p}" for p in ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        info = ["redis-cli", "-p", str(ports[0]), "cluster", "info"]
        wait(
            lambda: "cluster_state:ok" in subprocess.run(info, capture_output=True, text=True).stdout,
            what="cluster_state:ok",
        )
        yield nodes
    finally:
        servers.stop()


def test_replay_scenario_on_a_3_node_cluster(cluster, tmp_path):
    conf = config.load({"enabled": True, "cluster_nodes": cluster, "timeout": 5, "key_prefix": "jr"})
    engine = Engine(conf, tmp_path / "spool")
    minions = [f"web{i:03d}" for i in range(60)] + ["odd:id{1}", "ü space"]
    down = minions[::10]
    jids = [f"2026112210{i:010d}" for i in range(40)]  # 40 jobs: their keys spread over every node
    for jid in jids:
        engine.recorder.record(
            [new_event(jid, minions)] + [ret_event(jid, m) for m in minions if m not in down], trusted=True
        )
    assert not engine.recorder.spool.has_data()  # every write went through: no CROSSSLOT
    assert len(engine.loop.replayer.sweep()) == len(down) * len(jids)

    env = commands.Env({"sock_dir": "/nonexistent"}, conf, engine.store)
    env.known_minions = lambda: set(minions)  # no master here: the accepted keys are these
    assert set(commands.pending(env)) == set(down)
    assert commands.flush(env, down[0], jid=jids[0])["flushed"] == 1
    for minion in down:
        engine.start(minion)
    expected = {(m, j) for m in down for j in jids} - {(down[0], jids[0])}
    assert engine.run_until(lambda: len(engine.published) >= len(expected))
    assert sorted(engine.published) == sorted(expected)
    # one at a time: each replay went out after the previous one's return
    assert commands.status(env, jids[1])["summary"] == {"returned": len(minions)}

    slots = {engine.store.client.keyslot(engine.store.keys.queue(m)) for m in down}
    assert len(slots) == len(down)  # per-minion queues spread over slots
    owners = {node.name for node in engine.store.client.get_nodes()}
    assert len(owners) == 3


@pytest.fixture
def sentinel(tmp_path):
    servers = Servers(tmp_path)
    master_port, replica_port, sentinel_port = (_free_ports(1) for _ in range(3))
    base = f"bind 127.0.0.1\nsave ''\nappendonly no\ndir {tmp_path}\n"
    try:
        master = servers.start("master", f"{base}port {master_port}\n")
        servers.start("replica", f"{base}port {replica_port}\nreplicaof 127.0.0.1 {master_port}\n")
        wait(
            lambda: redis.Redis(port=replica_port).info("replication")["master_link_status"] == "up",
            what="replica in sync",
        )
        servers.start(
            "sentinel",
            f"bind 127.0.0.1\nport {sentinel_port}\ndir {tmp_path}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
            "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 3000\n",
            "--sentinel",
        )
        wait(
            lambda: redis.Redis(port=sentinel_port).execute_command("SENTINEL", "REPLICAS", "mymaster"),
            what="sentinel sees the replica",
        )
        yield {"sentinels": [f"127.0.0.1:{sentinel_port}"], "master": master, "master_port": master_port}
    finally:
        servers.stop()


def test_sentinel_failover_mid_run_loses_nothing(sentinel, tmp_path):
    options = {"enabled": True, "sentinels": sentinel["sentinels"], "timeout": 5, "socket_timeout": 1}
    conf = config.load(options)
    engine = Engine(conf, tmp_path / "spool")
    before = [f"2026112211{i:010d}" for i in range(10)]
    for jid in before:
        engine.recorder.record([new_event(jid, ["alpha", "beta"]), ret_event(jid, "alpha")], trusted=True)
    master = redis.Redis(port=sentinel["master_port"])
    assert master.execute_command("WAIT", 1, 2000) == 1  # the replica has it all

    os.killpg(sentinel["master"].pid, signal.SIGKILL)  # the master dies mid-run
    during = [f"2026112212{i:010d}" for i in range(10)]
    for jid in during:  # recorded while there is no master: spooled
        engine.recorder.record([new_event(jid, ["alpha", "beta"]), ret_event(jid, "alpha")], trusted=True)
    engine.start("beta")  # beta comes back during the failover
    began = time.monotonic()
    done = engine.run_until(lambda: len(engine.published) >= 20, timeout=45)
    failover = time.monotonic() - began
    assert done, f"replays after failover: {engine.published}"
    assert sorted(j for _, j in engine.published) == sorted(before + during)
    assert {m for m, _ in engine.published} == {"beta"}
    assert not engine.recorder.spool.has_data()
    print(f"\nsentinel failover: replays resumed {failover:.1f} s after the master was killed")
