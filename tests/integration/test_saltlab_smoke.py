"""Smoke test of the tests/saltlab.py harness itself (job_retry disabled; its modules need not even import)."""

import os
import time

import pytest

from tests.saltlab import Lab, json_docs, live_pgids


@pytest.mark.integration
def test_lab_starts_publishes_kills_and_cleans_up():
    t0 = time.monotonic()
    with Lab(job_retry={"enabled": False}, wait_for_engine=False) as lab:
        root = lab.root
        print(f"start: {time.monotonic() - t0:.1f} s")
        assert lab.redis().ping()

        ping = lab.salt("-L", "alpha,beta", "test.ping", "--out=json", "-t", "15")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        replies = {k: v for doc in json_docs(ping.stdout) for k, v in doc.items()}
        assert replies == {"alpha": True, "beta": True}

        lab.publish_trace("alpha", "smoke")
        assert lab.wait_trace("alpha", "smoke") == 1
        assert lab.trace_count("beta", "smoke") == 0

        t = time.monotonic()
        lab.kill_minion("beta")
        assert not lab.minion_running("beta")
        lab.start_minion("beta")
        print(f"beta kill + restart: {time.monotonic() - t:.1f} s")

        pgids = list(lab.pgids)
        assert len(pgids) == 5  # redis, master, alpha, beta twice
        t = time.monotonic()
    print(f"stop: {time.monotonic() - t:.1f} s, total {time.monotonic() - t0:.1f} s")

    assert not set(pgids) & live_pgids()
    assert not os.path.exists(root) or os.environ.get("JRE_KEEP") == "1"
