import pytest
from salt_job_retry import config
from salt_job_retry.config import ConfigError


def test_defaults_are_safe():
    conf = config.load(None)
    assert conf.enabled is False
    assert conf.max_attempts == 3
    assert conf.ttl == 7 * 24 * 3600
    assert "saltutil.find_job" in conf.exclude_functions
    assert "test.ping" in conf.exclude_functions
    assert "sys.*" in conf.exclude_functions
    assert conf.include_functions == ()


def test_option_table_matches_config_defaults():
    defaults = config.Config()
    for option in config.OPTIONS:
        value = getattr(defaults, option.name)
        expected = tuple(option.default) if isinstance(option.default, list) else option.default
        assert value == expected, option.name


@pytest.mark.parametrize(
    ("raw", "key", "kind"),
    [
        ({"enabled": "yes"}, "enabled", "boolean"),
        ({"enabled": 1}, "enabled", "boolean"),
        ({"max_attempts": 0}, "max_attempts", "integer >= 1"),
        ({"max_attempts": "3"}, "max_attempts", "integer >= 1"),
        ({"max_attempts": True}, "max_attempts", "integer >= 1"),
        ({"ttl": 10}, "ttl", "integer >= 60"),
        ({"timeout": -1}, "timeout", "number > 0"),
        ({"interval": "10s"}, "interval", "number > 0"),
        ({"redis_url": "http://localhost"}, "redis_url", "URL"),
        ({"key_prefix": "a{b}"}, "key_prefix", "string"),
        ({"key_prefix": ""}, "key_prefix", "string"),
        ({"exclude_functions": [1, 2]}, "exclude_functions", "list of glob strings"),
        ({"password": 1234}, "password", "string"),
    ],
)
def test_bad_values_name_the_key_and_type(raw, key, kind):
    with pytest.raises(ConfigError) as err:
        config.load(raw)
    assert f"job_retry:{key}: expected" in str(err.value)
    assert kind in str(err.value)


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        config.load(["enabled"])


@pytest.mark.parametrize("url", ["redis://h:1/0", "rediss://:pw@h:6380/1", "unix:///run/redis.sock?db=2"])
def test_url_schemes(url):
    assert config.load({"redis_url": url}).redis_url == url


def test_unknown_keys_warn_not_fail():
    conf = config.load({"enabled": True, "max_atempts": 5})
    assert conf.enabled
    assert conf.warnings == ("job_retry:max_atempts is not a known option and is ignored",)


def test_single_glob_string_is_a_list():
    assert config.load({"include_functions": "state.*"}).include_functions == ("state.*",)


def test_override_wins():
    conf = config.from_opts({"job_retry": {"enabled": True, "interval": 10}}, {"interval": 3})
    assert conf.interval == 3 and conf.enabled


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:secret@host:6380/0", "rediss://user:***@host:6380/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
    ],
)
def test_password_never_shown(url, shown):
    assert config.load({"redis_url": url}).redis_display == shown
