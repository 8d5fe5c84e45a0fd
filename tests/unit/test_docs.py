"""The README's config reference and pillar-example/ must match the defaults in config.OPTIONS."""

import re

import yaml
from salt_job_retry import config

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def readme_row(name):
    rows = [line for line in README.splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"README needs exactly one config table row for {name}"
    return rows[0]


def test_readme_documents_every_option_with_its_default():
    for option in config.OPTIONS:
        row = readme_row(option.name)
        default = option.default
        if isinstance(default, list):
            continue
        shown = "none" if default is None else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        assert shown in row, f"README default for {option.name} should be {shown}: {row}"


def test_readme_lists_the_default_exclusions():
    for pattern in config.DEFAULT_EXCLUDE_FUNCTIONS:
        assert f"`{pattern}`" in README, pattern


def test_pillar_example_matches_defaults():
    example = yaml.safe_load((REPO / "pillar-example" / "job_retry.sls").read_text())["job_retry"]
    text = (REPO / "pillar-example" / "job_retry.sls").read_text()
    for option in config.OPTIONS:
        if option.default is None:
            assert re.search(rf"#\s*{option.name}:", text), f"{option.name} missing from pillar-example"
            continue
        assert example[option.name] == option.default, option.name
    assert config.load(example) == config.Config()
