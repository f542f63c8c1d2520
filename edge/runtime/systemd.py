"""systemd's notify socket (READY, WATCHDOG, STATUS, STOPPING) without libsystemd."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("edge.systemd")


class SdNotify:
    """sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET."""

    def __init__(self, env: dict[str, str] | None = None):
        env = dict(os.environ) if env is None else env
        addr = env.get("NOTIFY_SOCKET")
        usec = env.get("WATCHDOG_USEC")
        self.watchdog_s = int(usec) / 1e6 if usec and usec.isdigit() else None
        self.addr = "\0" + addr[1:] if addr and addr.startswith("@") else addr
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self.addr else None

    def send(self, msg: str) -> None:
        if self.sock is not None and self.addr:
            try:
                self.sock.sendto(msg.encode(), self.addr)
            except OSError as e:
                log.debug("sd_notify failed: %s", e)
