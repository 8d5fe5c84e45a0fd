"""
The Redis Lua scripts of salt-job-retry: one module each, named after what it does.

Each module's docstring says what the script does; its ``SCRIPT`` opens with the KEYS and
ARGV it takes. Every script touches keys of one Redis Cluster slot and is idempotent.
They run by EVALSHA and are loaded (SCRIPT LOAD) when Redis answers NOSCRIPT: at the
first call of a process, and after Redis restarted or failed over.
"""

import hashlib

from . import (
    adopt,
    flush,
    heartbeat,
    minion_run,
    note_start,
    pair,
    record_delivery,
    record_new,
    record_refusal,
    record_return,
    release,
    retry_claim,
    rewind,
    seq_set,
    seq_take,
    settle,
    sweep_job,
    take_due,
    take_tokens,
)

# In the order the README lists them: recording, sweep, replay, operator, engine upkeep.
MODULES = (
    record_new,
    record_return,
    record_delivery,
    record_refusal,
    minion_run,
    sweep_job,
    note_start,
    seq_take,
    seq_set,
    pair,
    release,
    settle,
    flush,
    retry_claim,
    take_due,
    rewind,
    heartbeat,
    adopt,
    take_tokens,
)
SCRIPTS = {m.__name__.rpartition(".")[2]: m.SCRIPT for m in MODULES}
SUMMARIES = {m.__name__.rpartition(".")[2]: m.__doc__.strip() for m in MODULES}
SHAS = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in SCRIPTS.items()}
