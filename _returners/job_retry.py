"""
Record Salt jobs and returns for salt-job-retry.

Used as the master's ``event_return`` returner: from ``salt/job/<jid>/new`` it
records the job (fun, arg with kwargs, tgt, tgt_type, user, time) and merges its
target list; from ``salt/job/<jid>/start/<id>`` (Salt 3008 ``--start-event``) that
the minion accepted it; from ``salt/job/<jid>/ret/<id>`` that the minion returned.
A whole batch of events costs one Redis round trip.

Compatibility: ``event_return`` (master) and ``returner`` (``--return job_retry``,
runs where the return is made and needs the same config there). Nothing else.

If Redis is unreachable the events are spooled to disk (``spool_dir``, bounded
by ``spool_max_bytes``) and written when it is back; ``event_return`` never
raises, because Salt would drop the batch. The Redis key layout is documented in ``salt_job_retry.keys``.

Configuration (master config):

.. code-block:: yaml

    job_retry:
      enabled: true
      redis_url: redis://127.0.0.1:6379/0
    event_return: job_retry
"""

import importlib
import logging

import salt.config

log = logging.getLogger(__name__)

__virtualname__ = "job_retry"


def _core():
    """The shared package; from site-packages, or from extmods/utils after sync_all."""
    try:
        return importlib.import_module("salt_job_retry.recorder")
    except ImportError:
        # The returner loader, unlike the runner and engine loaders, does not put
        # utils_dirs on sys.path; a first sync_all happens after the master started.
        dirs = list(__opts__.get("utils_dirs") or [])
        if __opts__.get("extension_modules"):
            dirs.append(f"{__opts__['extension_modules']}/utils")
        salt.config.insert_system_path(__opts__, dirs)
        return importlib.import_module("salt_job_retry.recorder")


def __virtual__():
    try:
        _core()
    except ImportError as exc:
        return False, f"job_retry: shared package salt_job_retry (or redis/msgpack) not importable: {exc}"
    return __virtualname__


def _recorder():
    """The process's Recorder (config validated once), or None when disabled or misconfigured."""
    if "job_retry.recorder" in __context__:
        return __context__["job_retry.recorder"]
    recorder = _core()
    from salt_job_retry import saltside  # importable now that _core() succeeded
    from salt_job_retry.config import ConfigError

    override = None
    if __opts__.get("job_retry") is None and "config.get" in __salt__:
        override = __salt__["config.get"]("job_retry") or None  # e.g. pillar, for --return on a minion
    try:
        conf = saltside.load_config(__opts__, __context__, override)
    except ConfigError as exc:
        log.error("job_retry returner: invalid configuration, recording nothing: %s", exc)
        conf = None
    if conf is not None and not conf.enabled:
        log.info("job_retry returner: job_retry:enabled is false; recording nothing")
        conf = None
    cached = None
    if conf:
        # On the master (event_return) the returner can announce replays' deliveries and returns.
        fire = saltside.make_fire(__opts__) if __opts__.get("__role") == "master" else None
        store = saltside.store_for(conf, __context__)
        cached = recorder.Recorder(store, conf, saltside.spool_for(conf, __opts__), fire)
    __context__["job_retry.recorder"] = cached
    return cached


def event_return(events):
    """Record job and return events from the master's event bus. Never raises."""
    try:
        recorder = _recorder()
        if recorder is not None:
            recorder.record(events)
    except Exception:  # pylint: disable=broad-except
        log.exception("job_retry returner: unexpected error; %d event(s) not recorded", len(events or ()))


def returner(ret):
    """Record one minion's return (``--return job_retry``). Never raises."""
    if not isinstance(ret, dict):
        log.warning("job_retry returner: ignoring a return that is not a mapping")
        return
    tag = f"salt/job/{ret.get('jid')}/ret/{ret.get('id')}"
    event_return([{"tag": tag, "data": ret}])
