"""Both install routes and the off switch, each on a fresh master."""

import subprocess
import sys
import time

import msgpack

from tests.saltlab import REPO, Lab


def replay_scenario(lab, tag):
    """The core story on this lab: beta is down at publish, starts, runs the job once."""
    lab.kill_minion("beta")
    lab.publish_trace("*", tag)
    assert lab.wait_trace("alpha", tag) == 1
    lab.start_minion("beta")
    assert lab.wait_trace("beta", tag) == 1
    time.sleep(4)
    assert lab.trace_count("beta", tag) == 1


def test_sync_all_route_without_pip_install(tmp_path):
    probe = subprocess.run([sys.executable, "-c", "import salt_job_retry"], capture_output=True, cwd=tmp_path)
    assert probe.returncode != 0, "the package must not be pip-installed for this test"
    with Lab(install="sync") as lab:
        synced = lab.sync_all()
        assert "runners.job_retry" in synced["runners"]
        assert "returners.job_retry" in synced["returners"]
        assert "engines.job_retry" in synced["engines"]
        lab.restart_master()  # engines start only with the master
        lab.wait_engine()
        code, out = lab.run("job_retry.enqueue")
        assert code == 0, out
        replay_scenario(lab, "synced")
        assert "salt_job_retry" in "".join(p.name for p in (lab.extmods / "utils").iterdir())


def test_pip_route_without_sync(tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(REPO)],
        check=True,
        cwd=tmp_path,
    )
    assert (site / "salt_job_retry" / "engines" / "job_retry.py").exists()
    with Lab(install="pip", env={"PYTHONPATH": str(site)}) as lab:
        assert not (lab.extmods / "runners").exists()
        code, out = lab.run("job_retry.enqueue")
        assert code == 0, out
        replay_scenario(lab, "piped")


def test_disabled_records_and_replays_nothing():
    with Lab(job_retry={"enabled": False}, wait_for_engine=False) as lab:
        lab.kill_minion("beta")
        lab.publish_trace("*", "off")
        assert lab.wait_trace("alpha", "off") == 1
        lab.start_minion("beta")
        time.sleep(5)
        assert lab.trace_count("beta", "off") == 0
        assert list(lab.redis().scan_iter("jr:*")) == []
        code, out = lab.run("job_retry.pending")
        assert code == 1 and "disabled" in out["error"]


def test_replay_under_a_fresh_jid_closes_the_original():
    with Lab(job_retry={"replay_jid": "new"}) as lab:
        lab.kill_minion("beta")
        jid = lab.publish_trace("*", "freshjid")
        lab.start_minion("beta")
        assert lab.wait_trace("beta", "freshjid") == 1
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            code, out = lab.run("job_retry.status", jid)
            if out.get("summary") == {"returned": 2}:
                break
            time.sleep(0.5)
        assert out["summary"] == {"returned": 2}, out
        time.sleep(3)
        assert lab.trace_count("beta", "freshjid") == 1
        # the fresh jid is not a job of its own: no job record (its target set is inert)
        # (the engine's `grains.item pid` probes are recorded as excluded jobs: status can name them)
        client = lab.redis(decode_responses=False)
        tracked = [
            key.decode()
            for key in client.scan_iter("jr:{*}:job")
            if not msgpack.unpackb(client.get(key), raw=False).get("excluded")
        ]
        assert tracked == [f"jr:{{{jid}}}:job"], tracked
