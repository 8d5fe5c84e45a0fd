"""The README's config reference and pillar-example/ must match config.OPTIONS."""

import subprocess
import sys

import yaml
from salt_job_retry import config

from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_generated_docs_are_current():
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_config_docs.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout


def test_readme_lists_every_option_and_the_default_exclusions():
    for option in config.OPTIONS:
        assert f"| `{option.name}` |" in README, option.name
    for pattern in config.DEFAULT_EXCLUDE_FUNCTIONS:
        assert f"`{pattern}`" in README, pattern


def test_pillar_example_is_the_defaults():
    example = yaml.safe_load((REPO / "pillar-example" / "job_retry.sls").read_text())["job_retry"]
    assert config.load(example) == config.Config()
    assert set(example) | {o.name for o in config.OPTIONS if o.default is None} == config.OPTION_NAMES
