"""
The peer: saltext-redis's `redis` returner, `returner(ret)` once per return.

Runs in its own venv (saltext.redis pins redis-py < 4). Prints one JSON line:
{"returns": N, "seconds": S} for N returns written to the Redis on --port.
"""

import argparse
import json
import time

from saltext.redis.returners import redis_return


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--returns", type=int, required=True)
    parser.add_argument("--jid", default="20261122080000000000")
    args = parser.parse_args()
    redis_return.__opts__ = {"redis.host": "127.0.0.1", "redis.port": args.port, "redis.db": "0", "keep_jobs": 24}
    redis_return.__salt__ = {}
    redis_return.__context__ = {}
    rets = [
        {"id": f"minion-{i:05d}", "jid": args.jid, "fun": "cmd.run", "return": "hi", "retcode": 0, "success": True}
        for i in range(args.returns)
    ]
    redis_return.returner(rets[0])  # connect outside the timing
    began = time.perf_counter()
    for ret in rets:
        redis_return.returner(ret)
    print(json.dumps({"returns": len(rets), "seconds": time.perf_counter() - began}))


if __name__ == "__main__":
    main()
