"""
The Redis Lua scripts of salt-job-retry: one module each, named after what it does.

Each module's docstring says what the script does; its ``SCRIPT`` opens with the KEYS and
ARGV it takes. Every script touches keys of one Redis Cluster slot and is idempotent.
They run by EVALSHA and are loaded (SCRIPT LOAD) when Redis answers NOSCRIPT: at the
first call of a process, and after Redis restarted or failed over.
"""

import hashlib
import importlib

# In the order the README lists them: recording, sweep, replay, operator, engine upkeep.
NAMES = (
    "record_new",
    "record_return",
    "record_delivery",
    "record_refusal",
    "minion_run",
    "sweep_job",
    "note_start",
    "seq_take",
    "seq_set",
    "pair",
    "release",
    "settle",
    "flush",
    "retry_claim",
    "take_due",
    "rewind",
    "heartbeat",
    "adopt",
    "take_tokens",
)
MODULES = {name: importlib.import_module(f"{__name__}.{name}") for name in NAMES}
SCRIPTS = {name: module.SCRIPT for name, module in MODULES.items()}
SUMMARIES = {name: module.__doc__.strip() for name, module in MODULES.items()}
SHAS = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in SCRIPTS.items()}
