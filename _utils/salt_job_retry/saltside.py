"""
The few places the core talks to Salt itself: publishing, firing events,
asking who is connected, and caching a Store per process.

Functions take ``opts``/``context`` from the loader module; nothing here
reads Salt's dunders.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from . import config as config_mod
from .config import Config
from .redis_io import connect
from .spool import Spool
from .store import Store

log = logging.getLogger(__name__)

CONTEXT_KEY = "job_retry.store"


def load_config(opts: dict, context: dict | None = None, override: dict | None = None) -> Config:
    """Validated config, logged once per process when it has unknown keys."""
    conf = config_mod.from_opts(opts, override)
    if context is not None and conf.warnings and not context.get("job_retry.warned"):
        for warning in conf.warnings:
            log.warning(warning)
        context["job_retry.warned"] = True
    return conf


def spool_for(conf: Config, opts: dict) -> Spool:
    directory = conf.spool_dir or os.path.join(opts.get("cachedir") or "/var/cache/salt/master", "job_retry")
    return Spool(directory, conf.spool_max_bytes)


def client_ident(conf: Config) -> tuple:
    """What a cached Redis client depends on: a config change gets a new client."""
    return (conf.redis_url, conf.username, conf.password, conf.ssl_ca_certs, conf.ssl_certfile, conf.socket_timeout)


def store_for(conf: Config, context: dict | None) -> Store:
    """One Store (and connection pool) per process and connection parameters."""
    ident = client_ident(conf)
    cache = context.setdefault(CONTEXT_KEY, {}) if context is not None else {}
    client = cache.get(ident)
    if client is None:
        client = cache[ident] = connect(conf)
    return Store(client, conf)


def make_publisher(opts: dict):
    """publish(minion, jid, job, attempt): re-run a recorded job on one minion under jid."""
    state: dict[str, Any] = {}

    def publish(minion: str, jid: str, job: dict, attempt: int, extra_meta: dict | None = None) -> None:
        import salt.client

        if "client" not in state:
            state["client"] = salt.client.get_local_client(mopts=opts)
        meta = {"job_retry": {"attempt": attempt, **(extra_meta or {})}}
        # start_event: Salt 3008 minions acknowledge the publish (salt/job/<jid>/start/<id>), so a
        # replay's delivery is known; older minions ignore it.
        pub = state["client"].run_job(
            [minion], job["fun"], arg=job.get("arg", []), tgt_type="list", jid=jid, metadata=meta, start_event=True
        )
        if not pub or not pub.get("jid"):
            raise RuntimeError(f"the master did not accept the publish of {jid} to {minion}")

    return publish


def make_fire(opts: dict):
    """fire(data, tag) on the master event bus."""
    state: dict[str, Any] = {}

    def fire(data: dict, tag: str) -> None:
        import salt.utils.event

        if "bus" not in state:
            state["bus"] = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False)
        state["bus"].fire_event(data, tag)

    return fire


def new_jid(opts: dict) -> str:
    import salt.utils.jid

    return salt.utils.jid.gen_jid(opts)


def runs_job(running: Any, jid: str) -> bool:
    """Does a `saltutil.running` answer hold jid: the original, a replay or a retry of it?"""
    if not isinstance(running, list):
        return False
    for job in running:
        if not isinstance(job, dict):
            continue
        meta = job.get("metadata")
        ours = meta.get("job_retry") if isinstance(meta, dict) else None
        if str(job.get("jid")) == jid or (isinstance(ours, dict) and ours.get("orig_jid") == jid):
            return True
    return False


def probe(opts: dict, minions: list[str], jid: str, timeout: float) -> tuple[set[str], set[str]]:
    """
    Ask `minions` whether they are running `jid` (saltutil.running); returns (idle, running).

    A minion that answers is connected; one that runs the job, under its own jid or
    under a replay's or a retry's fresh jid (metadata.job_retry.orig_jid), must not get
    it again. Minions that do not answer within `timeout` are in neither set.
    """
    import salt.client

    if not minions:
        return set(), set()
    client = salt.client.get_local_client(mopts=opts)
    idle: set[str] = set()
    running: set[str] = set()
    try:
        pub = client.run_job(minions, "saltutil.running", tgt_type="list", listen=True)
        probe_jid = pub.get("jid") if pub else None
        if not probe_jid:
            return idle, running
        deadline = time.monotonic() + timeout
        for raw in client.get_returns_no_block(f"salt/job/{probe_jid}"):
            data = raw.get("data") if raw else None
            if isinstance(data, dict) and data.get("id") in minions:
                (running if runs_job(data.get("return"), jid) else idle).add(data["id"])
            if len(idle) + len(running) >= len(minions) or time.monotonic() > deadline:
                break
    finally:
        client.destroy()
    return idle, running


def engine_id(opts: dict) -> str:
    """This master's engine, as other engines sharing the Redis know it."""
    return f"{opts.get('id')}@{opts.get('interface')}:{opts.get('ret_port')}"


def minion_pids(opts: dict, minions: list[str], timeout: float) -> dict[str, str]:
    """
    Ask minions for their process id (grains.item pid) through this master.

    An answer identifies the minion process and proves it is connected to this
    master; minions that do not answer within `timeout` are left out.
    """
    import salt.client

    if not minions:
        return {}
    client = salt.client.get_local_client(mopts=opts)
    pids: dict[str, str] = {}
    try:
        pub = client.run_job(minions, "grains.item", arg=["pid"], tgt_type="list", listen=True)
        probe_jid = pub.get("jid") if pub else None
        if not probe_jid:
            return pids
        deadline = time.monotonic() + timeout
        for raw in client.get_returns_no_block(f"salt/job/{probe_jid}"):
            data = raw.get("data") if raw else None
            if isinstance(data, dict) and data.get("id") in minions and isinstance(data.get("return"), dict):
                pid = data["return"].get("pid")
                if isinstance(pid, int):
                    pids[data["id"]] = str(pid)
            if len(pids) >= len(minions) or time.monotonic() > deadline:
                break
    finally:
        client.destroy()
    return pids


def accepted_minions(opts: dict) -> set[str]:
    """Minion ids with an accepted key (to tell an unknown id from an idle one)."""
    import salt.key

    return set(salt.key.get_key(opts).list_keys().get("minions", []))
