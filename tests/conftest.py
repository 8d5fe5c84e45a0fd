import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The shared package, as salt puts extmods/utils (or utils_dirs) on sys.path.
if str(REPO / "_utils") not in sys.path:
    sys.path.insert(0, str(REPO / "_utils"))
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: drives real redis-server / salt daemons")
