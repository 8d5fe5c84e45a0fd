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


MATRIX: list[str] = []


@pytest.fixture
def fault_matrix():
    """Record one row of the fault matrix: fault, published, ran, ran twice, lost."""

    def row(fault, published, ran, twice, lost, note=""):
        MATRIX.append(f"{fault:<48} published={published:<4} ran={ran:<4} ran_twice={twice:<3} lost={lost:<3} {note}")

    return row


def pytest_terminal_summary(terminalreporter):
    if MATRIX:
        terminalreporter.section("fault matrix (counts by effect on the minions / publisher)")
        for line in MATRIX:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def redis_only():
    """A real redis-server on loopback, no Salt: for faults in our own engine code."""
    lab = Lab(minions=())
    lab.start_redis()
    try:
        yield lab
    finally:
        lab.stop()
