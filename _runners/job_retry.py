"""
Operate salt-job-retry: see what is owed to which minion, cancel it, retry a job.

Every function returns plain data, so ``--out=json`` and ``--out=yaml`` work.
Errors (feature disabled, Redis unreachable, unknown jid or minion) come back as
``{"error": "...", "retcode": 1}`` and ``salt-run`` exits 1.

Configuration (master config):

.. code-block:: yaml

    job_retry:
      enabled: true
      redis_url: redis://127.0.0.1:6379/0
      timeout: 30
      max_attempts: 3
"""

import logging

log = logging.getLogger(__name__)

__virtualname__ = "job_retry"

try:
    from salt_job_retry import commands

    IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported by __virtual__
    IMPORT_ERROR = exc


def __virtual__():
    if IMPORT_ERROR is not None:
        return False, f"job_retry: shared package salt_job_retry (or redis/msgpack) not importable: {IMPORT_ERROR}"
    return __virtualname__


def _invoke(name, **kwargs):
    return commands.invoke(__opts__, __context__, name, **kwargs)


def pending(minion_id=None, fun=None):
    """
    Jobs queued for replay, per minion: ``{minion_id: [{jid, fun, arg, attempts, queued_at}]}``.

    minion_id
        A minion id (error if it has no accepted key and nothing pending) or a glob.
    fun
        Only jobs whose function matches this glob (e.g. ``state.*``).

    A job is queued once it is ``timeout`` seconds old and the minion has not
    returned (by the engine's sweep, or ``job_retry.enqueue``).

    CLI Example:

    .. code-block:: bash

        salt-run job_retry.pending
        salt-run job_retry.pending 'web*' fun='state.*' --out=json
    """
    return _invoke("pending", minion_id=minion_id, fun=fun)


def flush(minion_id, jid=None, dry_run=False):
    """
    Cancel what minions are owed: nothing of it will be replayed.

    minion_id
        A minion id, or a glob over the minions that have something queued.
    jid
        Cancel only this job (default: all the minion is owed, queued or not yet swept).
    dry_run
        ``True``: only list what would be cancelled.

    Returns ``{minion, flushed: <count>, jids: [...]}`` for one minion,
    ``{minions: {id: [jid, ...]}, flushed: <count>}`` for a glob. Fires
    ``salt/job_retry/progress/flush`` every 100 minions.

    CLI Example:

    .. code-block:: bash

        salt-run job_retry.flush web3
        salt-run job_retry.flush web3 jid=20261122050816467566
        salt-run job_retry.flush 'web*' dry_run=True
    """
    return _invoke("flush", minion_id=minion_id, jid=jid, dry_run=dry_run)


def retry(jid):
    """
    Run a job again now on every targeted minion that did not return.

    Minions that answer a ping get it at once under a fresh jid (linked to the
    original by metadata, so a minion that saw the original jid still runs it;
    its return marks the original returned). The others stay queued for their
    next start. Attempts of these minions start again from zero.

    Returns ``{jid, retry_jid, published: [...], queued: [...]}``.

    CLI Example:

    .. code-block:: bash

        salt-run job_retry.retry 20261122050816467566
    """
    return _invoke("retry", jid=jid)


def enqueue():
    """
    The sweep: queue the missing minions of every job older than ``timeout``.

    The engine runs this every ``interval`` seconds; run it by hand when the
    engine is off. Returns ``{queued: {jid: [minion, ...]}, count}``. Fires
    ``salt/job_retry/progress/enqueue`` after each batch of 500 jobs.

    CLI Example:

    .. code-block:: bash

        salt-run job_retry.enqueue
    """
    return _invoke("enqueue")


def status(jid):
    """
    Per-minion delivery state of one job.

    States: ``returned``; ``waiting`` (published less than ``timeout`` ago);
    ``pending`` (owed, with ``attempts``); ``exhausted`` (``max_attempts`` replays
    without a return); ``flushed`` (cancelled). A job whose function is excluded
    says ``excluded: true``.

    CLI Example:

    .. code-block:: bash

        salt-run job_retry.status 20261122050816467566 --out=json
    """
    return _invoke("status", jid=jid)


def stats(format="data"):  # pylint: disable=redefined-builtin
    """
    Counts: tracked jobs, pending pairs (by minion), oldest pending age, replays,
    queued, exhausted and interrupted pairs.

    format
        ``data`` (default) or ``prometheus`` for the text exposition format, e.g.
        for node_exporter's textfile collector.

    CLI Example:

    .. code-block:: bash

        salt-run job_retry.stats --out=json
        salt-run job_retry.stats format=prometheus --out=txt
    """
    return _invoke("stats", format=format)
