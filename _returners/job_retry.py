"""
Record Salt jobs and returns for salt-job-retry.

As the master's ``master_job_cache`` it stands in front of Salt's own job cache
(``job_retry:job_cache``, default ``local_cache``), hands every call on to it, and
records what only the master itself produces: the job of each publish (fun, arg
with kwargs, tgt, tgt_type, user, time, target list: ``save_load`` called with the
target list, which only the master's publish path does) and each return Salt
stored for a minion (``returner``). One Redis round trip per publish or return.

As the master's ``event_return`` it records only the Salt 3008 start acks
(``salt/job/<jid>/start/<id>``, ``--start-event``). Jobs and returns on the event
bus are never recorded: any minion can fire them (``event.send``).

Compatibility: ``master_job_cache``, ``event_return`` (master) and ``returner``
(``--return job_retry``, runs where the return is made and needs the same config
there, Redis credentials included). Nothing else.

If Redis is unreachable the events are spooled to disk (``spool_dir``, bounded
by ``spool_max_bytes``) and written when it is back; ``event_return`` never
raises, because Salt would drop the batch. The Redis key layout is documented in ``salt_job_retry.keys``.

Configuration (master config):

.. code-block:: yaml

    job_retry:
      enabled: true
      redis_url: redis://127.0.0.1:6379/0
      job_cache: local_cache    # Salt's job history, kept as before
    master_job_cache: job_retry
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
    # Always loads: as master_job_cache it must hand Salt's job history on even when the
    # shared package is missing (a master with no job cache cannot publish at all).
    return __virtualname__


def _recorder():
    """The process's Recorder (config validated once), or None when disabled or misconfigured."""
    if "job_retry.recorder" in __context__:
        return __context__["job_retry.recorder"]
    try:
        recorder = _core()
    except ImportError as exc:
        log.error("job_retry returner: shared package salt_job_retry (or redis/msgpack) not importable: %s", exc)
        __context__["job_retry.recorder"] = None
        return None
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
        on_master = __opts__.get("__role") == "master"
        fire = saltside.make_fire(__opts__) if on_master else None
        engine = saltside.engine_id(__opts__) if on_master else None  # starts on its bus are noted for it
        store = saltside.store_for(conf, __context__)
        cached = recorder.Recorder(store, conf, saltside.spool_for(conf, __opts__), fire, engine)
    __context__["job_retry.recorder"] = cached
    return cached


def _record(events, trusted):
    """Hand events to the Recorder. Never raises."""
    try:
        recorder = _recorder()
        if recorder is not None:
            recorder.record(events, trusted=trusted)
    except Exception:  # pylint: disable=broad-except
        log.exception("job_retry returner: unexpected error; %d event(s) not recorded", len(events or ()))


def event_return(events):
    """Record the start acks on the master's event bus (nothing else there is trusted). Never raises."""
    _record(events, trusted=False)


# --- master_job_cache: every call goes on to the real job cache -----------------------


def _cache_name():
    """The job cache behind us; local_cache when the option is unusable (Salt's history must not stop)."""
    block = __opts__.get("job_retry")
    name = block.get("job_cache", "local_cache") if isinstance(block, dict) else "local_cache"
    if not isinstance(name, str) or not name or name == __virtualname__:
        log.error("job_retry: job_retry:job_cache %r is not a usable job cache; using local_cache", name)
        return "local_cache"
    return name


def _cache_loader():
    """(name, returners) of the job cache behind us, loaded once per process; local_cache if it will not load."""
    loaded = __context__.get("job_retry.job_cache")
    if loaded is None:
        import salt.loader

        name = _cache_name()
        returners = salt.loader.returners(__opts__, __salt__, whitelist=[name])
        if f"{name}.save_load" not in returners and name != "local_cache":
            log.error("job_retry: job cache %r did not load (job_retry:job_cache); using local_cache", name)
            name = "local_cache"
            returners = salt.loader.returners(__opts__, __salt__, whitelist=[name])
        loaded = __context__["job_retry.job_cache"] = (name, returners)
    return loaded


def _cache(function):
    """A function of the job cache behind us (a KeyError, as from Salt's loader, when it lacks it)."""
    name, returners = _cache_loader()
    return returners[f"{name}.{function}"]


def _cache_has(function):
    name, returners = _cache_loader()
    return f"{name}.{function}" in returners


def _on_master():
    return __opts__.get("__role") == "master"


def save_load(jid, clear_load, minions=None, **kwargs):
    """
    Save a job's load; with `minions`, it is the master publishing it: record the job.

    Salt's publish path (ClearFuncs._prep_pub) is the only caller that passes the
    target list; a minion can reach save_load only without it (a ``req`` return,
    ``_syndic_return``).
    """
    if minions is not None and _on_master() and isinstance(clear_load, dict):
        _record([_publish_event(jid, clear_load, minions)], trusted=True)
    elif minions is None and _cache_loader()[0] == "local_cache" and _saved(jid):
        # Salt's store_job skips this for local_cache only; behind us it cannot tell.
        return None
    return _cache("save_load")(jid, clear_load, minions, **kwargs)


def _saved(jid):
    try:
        return bool(_cache("get_load")(jid))
    except Exception:  # pylint: disable=broad-except
        return False  # an unreadable load: save this one, as Salt would have tried to


def _publish_event(jid, load, minions):
    import datetime

    # the fields of Salt's own salt/job/<jid>/new event, stamped now on this master's clock: a
    # spooled job must keep its publish time (a minion that started meanwhile is owed it)
    data = {key: load.get(key) for key in ("tgt_type", "tgt", "user", "fun", "arg")}
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat()
    data.update(jid=jid, minions=list(minions), _stamp=stamp)
    meta = load.get("metadata")
    if isinstance(meta, dict) and "job_retry" in meta:
        data["job_retry_replay"] = True  # our engine's publish: a replay, not a job of its own
    return {"tag": f"salt/job/{jid}/new", "data": data}


def returner(ret):
    """
    Record one minion's return: on the master, as its job cache (Salt's store_job,
    after it authenticated the minion), and hand it on; elsewhere ``--return job_retry``.
    Recording never raises.
    """
    if not isinstance(ret, dict):
        log.warning("job_retry returner: ignoring a return that is not a mapping")
    else:
        _record([{"tag": f"salt/job/{ret.get('jid')}/ret/{ret.get('id')}", "data": ret}], trusted=True)
    if _on_master():
        return _cache("returner")(ret)
    return None


def prep_jid(nocache=False, passed_jid=None, **kwargs):
    return _cache("prep_jid")(nocache=nocache, passed_jid=passed_jid, **kwargs)


def save_minions(jid, minions, syndic_id=None):
    # Salt calls it for a minion's batched event naming "minions" too: never recorded.
    return _cache("save_minions")(jid, minions, syndic_id=syndic_id)


def get_load(jid):
    return _cache("get_load")(jid)


def get_jid(jid):
    return _cache("get_jid")(jid)


def get_jids():
    return _cache("get_jids")()


def get_jids_filter(count, filter_find_job=True):
    if not _cache_has("get_jids_filter"):  # what Salt's jobs runner says when the cache lacks it
        raise NotImplementedError(f"'{_cache_loader()[0]}.get_jids_filter' returner function not implemented yet.")
    return _cache("get_jids_filter")(count, filter_find_job)


def clean_old_jobs():
    return _cache("clean_old_jobs")()


# Salt calls these only when the job cache has them; one that lacks them gets what Salt does then.
def update_endtime(jid, time):
    return _cache("update_endtime")(jid, time) if _cache_has("update_endtime") else None


def get_endtime(jid):
    return _cache("get_endtime")(jid) if _cache_has("get_endtime") else False


def save_reg(data):
    return _cache("save_reg")(data)


def load_reg():
    return _cache("load_reg")()
