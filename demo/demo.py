"""
The salt-job-retry story on real daemons, in about a minute.

A local redis-server, a salt-master running the job_retry returner and engine,
and minions alpha and beta, all on 127.0.0.1 under one temp dir. beta is down
when a job is published; it comes back and runs the job, once, under the
original jid. Everything is stopped and removed at the end (JRE_KEEP=1 keeps it).
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.saltlab import Lab


def say(step, text):
    print(f"\n[{step}] {text}", flush=True)


def show(value):
    print("    " + json.dumps(value, indent=2, sort_keys=True).replace("\n", "\n    "), flush=True)


def wait_for(check, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    return check()


def main():
    say(1, "Starting redis-server, a salt-master (job_retry returner + engine) and minions alpha, beta")
    with Lab(job_retry={"timeout": 5, "interval": 2}) as lab:
        print(f"    everything lives in {lab.root}; Redis on 127.0.0.1:{lab.redis_port}")
        say(2, "beta goes offline (its process is killed)")
        lab.kill_minion("beta")

        say(3, "salt '*' cmd.run 'echo deployed {{ grains.id }} | tee -a trace' template=jinja")
        command = f'echo "deployed {{{{ grains.id }}}}" | tee -a {lab.root}/trace/{{{{ grains.id }}}}.log'
        jid = lab.salt_async("*", "cmd.run", command, "template=jinja")
        print(f"    published as jid {jid}")
        alpha = lab.wait_trace("alpha", "deployed")
        print(f"    alpha ran it ({alpha}x); beta is down and did not")

        say(4, "salt-run job_retry.pending   (the engine's sweep queues beta after `timeout`)")
        pending = wait_for(lambda: lab.run("job_retry.pending")[1].get("beta"), timeout=30)
        show({"beta": pending})

        say(5, "beta boots again; the engine sees salt/minion/beta/start and replays what beta missed")
        lab.start_minion("beta")
        beta = lab.wait_trace("beta", "deployed")
        time.sleep(4)  # long enough for a duplicate to show, if there were one
        beta = lab.trace_count("beta", "deployed")
        print(f"    beta ran it ({beta}x)")

        say(6, f"salt-run job_retry.status {jid}")
        state = wait_for(
            lambda: (lambda s: s if s.get("summary") == {"returned": 2} else None)(lab.run("job_retry.status", jid)[1]),
            15,
        )
        show(state and state["minions"])

        say(7, f"salt-run jobs.lookup_jid {jid}   (beta's late result, under the original jid)")
        _, lookup = lab.run("jobs.lookup_jid", jid)
        show(lookup)

        ok = alpha == 1 and beta == 1 and state and isinstance(lookup, dict) and lookup.get("beta") == "deployed beta"
    if ok:
        print(f"\nSUCCESS: beta was down when job {jid} was published, came back, and ran it exactly once.")
        return 0
    print("\nFAILED: see the output above", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
