"""The events salt-job-retry fires for reactors: ``salt/job_retry/<jid>/<action>/<minion>``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

EVENT_PREFIX = "salt/job_retry"
ACTIONS = ("queued", "replayed", "delivered", "returned", "exhausted", "interrupted")


def fire_action(fire: Callable[[dict, str], None], action: str, jid: str, minion: str, **data: Any) -> None:
    """Fire ``salt/job_retry/<jid>/<action>/<minion>``; never raises."""
    try:
        fire({"jid": jid, "minion": minion, **data}, f"{EVENT_PREFIX}/{jid}/{action}/{minion}")
    except Exception:  # an event is a courtesy, not a reason to stop
        log.exception("job_retry: could not fire %s event for %s/%s", action, jid, minion)
