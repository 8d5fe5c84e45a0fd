"""
Regenerate the README's config table and pillar-example/job_retry.sls from
salt_job_retry.config.OPTIONS, the one place the defaults live, and the README's
Redis key table and Lua script list from salt_job_retry.keys.SCHEMA and .lua.

    .venv/bin/python scripts/gen_config_docs.py          # rewrite both files
    .venv/bin/python scripts/gen_config_docs.py --check  # exit 1 if they are stale
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "_utils"))

from salt_job_retry.config import OPTIONS  # noqa: E402
from salt_job_retry.keys import SCHEMA  # noqa: E402
from salt_job_retry.lua import SUMMARIES  # noqa: E402

README = REPO / "README.md"
PILLAR = REPO / "pillar-example" / "job_retry.sls"
CONFIG, KEYS, SCRIPTS = "config-table", "schema-table", "lua-scripts"


def shown(value):
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "see below" if value else "`[]`"
    return f"`{value}`"


def table() -> str:
    rows = ["| option | type | default | effect |", "|---|---|---|---|"]
    rows += [f"| `{o.name}` | {o.kind} | {shown(o.default)} | {o.doc} |" for o in OPTIONS]
    return "\n".join(rows)


def schema_table() -> str:
    rows = ["| key | type | content |", "|---|---|---|"]
    rows += [f"| `{k.pattern}` | {k.kind} | {k.content} |" for k in SCHEMA]
    return "\n".join(rows)


def lua_list() -> str:
    rows = ["| script (`_utils/salt_job_retry/lua/`) | what it does |", "|---|---|"]
    rows += [f"| `{name}.py` | {summary} |" for name, summary in SUMMARIES.items()]
    return "\n".join(rows)


def fill(text: str, marker: str, body: str) -> str:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def readme(text: str) -> str:
    text = fill(text, CONFIG, table())
    text = fill(text, KEYS, schema_table())
    return fill(text, SCRIPTS, lua_list())


def yaml_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[]" if not value else "\n" + "\n".join(f"    - {v}" for v in value)
    return str(value)


def pillar() -> str:
    lines = [
        "# salt-job-retry: every option of the `job_retry:` block, with its default.",
        "# Generated from salt_job_retry/config.py by scripts/gen_config_docs.py.",
        "#",
        "# This block goes in the MASTER config (e.g. /etc/salt/master.d/job_retry.conf):",
        "# the returner, runner and engine all run on the master and read it there.",
        "# Minions that use `--return job_retry` read it with config.get (pillar works).",
        "",
        "job_retry:",
    ]
    for option in OPTIONS:
        lines.append(f"  # {option.doc} ({option.kind})")
        if option.default is None:
            lines.append(f"  # {option.name}:")
        else:
            lines.append(f"  {option.name}: {yaml_value(option.default)}")
        lines.append("")
    return "\n".join(lines[:-1]) + "\n"


def main() -> int:
    wanted = {README: readme(README.read_text()), PILLAR: pillar()}
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    if "--check" in sys.argv:
        for path in stale:
            print(f"{path.relative_to(REPO)} is stale: run scripts/gen_config_docs.py")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
        print(f"rewrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
