"""One socket write for all the PUBACKs of one read, in gmqtt (0.8).

gmqtt parses every packet of a socket read in one go (``MQTTProtocol._read_packet``) but writes each
QoS 1 acknowledgement on its own, a ``send`` system call per message: ~18% of the ingest process's
time in a py-spy profile at 6k msg/s. While a read is parsed, writes are collected here and sent
together when it ends (also when it fails), in order; a write outside parsing goes out at once as
before. What is written and when, relative to the packets it answers, is unchanged: the
acknowledgements of one read leave before the next read is taken.

Installed once, for every gmqtt connection in the process (only the telemetry receiver,
coordinator/telemetry/receiver.py, uses gmqtt); the ``coordinator`` extra pins gmqtt below 0.9, the
release these internals were read from.
"""

from __future__ import annotations

from typing import Any

from gmqtt.mqtt.protocol import MQTTProtocol

__all__ = ["install"]

_MARK = "_edgefleet_coalesced_acks"


def install() -> None:
    if getattr(MQTTProtocol, _MARK, False):
        return
    read_packet, write_data = MQTTProtocol._read_packet, MQTTProtocol.write_data

    def _read_packet(self: Any, data: bytes) -> int:
        pending: list[bytes] = []
        self._edgefleet_pending = pending
        try:
            return int(read_packet(self, data))
        finally:
            self._edgefleet_pending = None
            if pending:
                write_data(self, b"".join(pending))

    def _write_data(self: Any, data: bytes) -> None:
        pending = getattr(self, "_edgefleet_pending", None)
        if pending is None:
            write_data(self, data)
        else:
            pending.append(data)

    MQTTProtocol._read_packet = _read_packet
    MQTTProtocol.write_data = _write_data
    setattr(MQTTProtocol, _MARK, True)
