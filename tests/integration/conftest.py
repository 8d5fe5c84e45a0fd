import shutil

import pytest

from tests.saltlab import Lab


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _need_redis_server():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run scripts/setup.sh (apt-get install redis-server)")


@pytest.fixture(scope="module")
def lab():
    """One master (module dirs pointing at this checkout), two minions, one Redis."""
    with Lab() as running:
        yield running


@pytest.fixture
def fleet(lab):
    """Both minions up at the start of each test."""
    for name in ("alpha", "beta"):
        if not lab.minion_running(name):
            lab.start_minion(name)
    return lab
