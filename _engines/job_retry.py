"""
Replay missed jobs to minions when they start (salt-job-retry).

On ``salt/minion/<id>/start`` the engine republishes to that minion the jobs it
missed (queued by the sweep, or published while it was down and not swept yet),
one at a time in publish order: the next goes out when the previous returned, or
after ``replay_wait``. Replays keep the original jid and carry
``metadata: {job_retry: {attempt: n}}``; at most ``max_replays_per_second`` go
out across every engine sharing the Redis. The engine of the master that saw the
start serves it. Every ``interval`` seconds it runs the sweep. It fires
``salt/job_retry/<jid>/queued|replayed|superseded|exhausted|interrupted/<minion>``.

The engine never exits: Redis trouble is logged and retried with backoff.
Engines start only with the master: restart it after installing or syncing.

Configuration (master config; engine keyword arguments override the block):

.. code-block:: yaml

    job_retry:
      enabled: true
      redis_url: redis://127.0.0.1:6379/0
      interval: 10
    master_job_cache: job_retry   # the returner records what this master publishes
    engines:
      - job_retry: {}
"""

import logging
import time

log = logging.getLogger(__name__)

__virtualname__ = "job_retry"

try:
    from salt_job_retry import recorder, replay, saltside
    from salt_job_retry.config import ConfigError

    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by __virtual__
    IMPORT_ERROR = exc


def __virtual__():
    if IMPORT_ERROR is not None:
        return False, f"job_retry: shared package salt_job_retry (or redis/msgpack) not importable: {IMPORT_ERROR}"
    return __virtualname__


def _idle(reason):
    log.warning("job_retry engine: %s; the engine idles until the master restarts", reason)
    while True:
        time.sleep(3600)


def _next_event(bus, wait):
    # Salt reads wait=0 as "block forever": when work is due, only look.
    if wait <= 0:
        return bus.get_event(no_block=True, full=True)
    return bus.get_event(wait=wait, full=True)


def start(**kwargs):
    """Run the replay engine; never returns."""
    import salt.utils.event

    try:
        conf = saltside.load_config(__opts__, {}, kwargs or None)
    except ConfigError as exc:
        _idle(f"invalid configuration: {exc}")
    if not conf.enabled:
        _idle("job_retry:enabled is false")
    if __opts__.get("master_job_cache") != "job_retry":
        log.error(
            "job_retry engine: master_job_cache is %r, not job_retry: no job is recorded on this master, "
            "so none can be replayed (jobs are taken only from the master's own job cache)",
            __opts__.get("master_job_cache"),
        )
    store = saltside.store_for(conf, {})
    bus = salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=True)
    publish = saltside.make_publisher(__opts__)
    engine = saltside.engine_id(__opts__)
    new_jid = lambda: saltside.new_jid(__opts__)  # noqa: E731
    replayer = replay.Replayer(store, conf, publish, bus.fire_event, new_jid, engine=engine)
    writer = recorder.Recorder(store, conf, saltside.spool_for(conf, __opts__))
    next_event = lambda wait: _next_event(bus, wait)  # noqa: E731
    probe = lambda minions, timeout: saltside.minion_pids(__opts__, minions, timeout)  # noqa: E731
    loop = replay.EngineLoop(replayer, next_event, conf.interval, recorder=writer, probe=probe)
    log.info("job_retry engine %s started (redis %s, sweep every %ss)", engine, conf.redis_display, conf.interval)
    loop.run_forever()
