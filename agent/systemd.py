"""systemd's notify protocol (READY, STOPPING, WATCHDOG, STATUS) over $NOTIFY_SOCKET, if run under systemd."""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify", "watchdog_interval_s"]

log = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send ``READY=1`` style lines; False (and nothing sent) when not started by systemd with Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(states).encode(), address)
    except OSError as exc:
        log.warning("systemd notify failed: %s", exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog timeout systemd asked for (WatchdogSec), or None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000 / 2
