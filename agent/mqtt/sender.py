"""Delivers the outbox: publishes pending messages with QoS 1 while connected, acks them on PUBACK."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import paho.mqtt.client as mqtt

from edgefleet.agent.mqtt.outbox import Outbox, OutboxError, OutboxItem
from edgefleet.protocol.topics import Channel

__all__ = ["OutboxSender", "Publish"]

log = logging.getLogger(__name__)

Publish = Callable[[Channel, bytes], mqtt.MQTTMessageInfo | None]


class Gate(Protocol):
    """When sending may happen: a threading.Event, or the agent link's SendGate."""

    def is_set(self) -> bool: ...


class OutboxSender:
    """A worker thread that publishes pending messages while connected and acks them on PUBACK.

    ``publish`` sends raw payload bytes with QoS 1 on the channel's topic and returns the paho
    message info, or None when it cannot publish (offline, or paho refused). A message is acked only
    once its PUBACK arrived; anything else stays pending and is sent again later, so delivery is at
    least once and the coordinator de-duplicates by message id.
    """

    def __init__(
        self,
        outbox: Outbox,
        publish: Publish,
        connected: Gate,
        *,
        batch: int = 50,
        ack_timeout_s: float = 10.0,
        poll_s: float = 1.0,
    ) -> None:
        if batch < 1 or ack_timeout_s <= 0 or poll_s <= 0:
            raise ValueError(f"batch ({batch}), ack_timeout_s ({ack_timeout_s}) and poll_s ({poll_s}) must be positive")
        self.outbox = outbox
        self._publish = publish
        self._connected = connected
        self._batch = batch
        self._ack_timeout_s = ack_timeout_s
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered = 0  # messages acked since start, for status and tests

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("OutboxSender already started")
        self._thread = threading.Thread(target=self._run, name="outbox-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop within about a second; whatever was not acked stays pending for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("outbox sender did not stop within %.1f s", timeout)

    def wake(self) -> None:
        """Send now rather than at the next poll (call after ``Outbox.put``)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            more = False
            if self._connected.is_set():
                try:
                    more = self._send_round()
                except OutboxError as exc:
                    log.error("outbox sender: %s; retrying in %.1f s", exc.reason, self._poll_s)
                except Exception:  # a bug in publish must not end delivery for good
                    log.exception("outbox sender round failed; retrying in %.1f s", self._poll_s)
            if not more:
                self._wake.wait(self._poll_s)
                self._wake.clear()  # put commits before it wakes us, so the next round sees it

    def _send_round(self) -> bool:
        """Publish one batch and ack what was confirmed; True if a full batch went out (more may wait)."""
        items = self.outbox.pending(self._batch)
        in_flight: list[tuple[OutboxItem, mqtt.MQTTMessageInfo]] = []
        for item in items:
            if self._stop.is_set() or not self._connected.is_set():
                break
            info = self._publish(item.channel, item.payload)
            if info is None:
                log.debug("publish of %s %s refused; keeping the rest for later", item.channel.value, item.message_id)
                break
            in_flight.append((item, info))
        deadline = time.monotonic() + self._ack_timeout_s
        delivered = [item.id for item, info in in_flight if self._confirmed(info, deadline)]
        self.outbox.ack(delivered)
        self.delivered += len(delivered)
        unconfirmed = len(in_flight) - len(delivered)
        if unconfirmed and not self._stop.is_set():
            if self._connected.is_set():
                log.warning(
                    "%d of %d published messages got no PUBACK within %.1f s; they stay pending",
                    unconfirmed,
                    len(in_flight),
                    self._ack_timeout_s,
                )
            else:
                log.info("link lost with %d messages unconfirmed; they stay pending", unconfirmed)
        return len(items) == self._batch and len(delivered) == len(items)

    def _confirmed(self, info: mqtt.MQTTMessageInfo, deadline: float) -> bool:
        """Wait for the PUBACK until ``deadline``, in short steps so stop and a lost link are noticed."""
        try:
            while not info.is_published():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set() or not self._connected.is_set():
                    return False
                info.wait_for_publish(timeout=min(remaining, 0.2))
        except (ValueError, RuntimeError) as exc:  # paho: queue full, or the publish failed
            log.debug("publish %s not delivered: %s", info.mid, exc)
            return False
        return True
