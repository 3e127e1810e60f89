"""An MQTT client for tests, made by the agent's own ``make_client``: records connects, disconnects, messages."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.common.mqtt import BrokerConfig, make_client


class MqttProbe:
    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        *,
        client_id: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.config = BrokerConfig(url=url, username=username, password=password, ca_file=ca_file)
        client_id = client_id or f"probe-{username}-{time.monotonic_ns()}"
        self.client = make_client(self.config, client_id, clean_session=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.connects: queue.Queue[str] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.disconnects = 0
        self._subscribed: queue.Queue[list[Any]] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self._subscribed.put(list(codes))

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connects.put(str(reason))
        if not reason.is_failure:
            self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        self.disconnects += 1
        self.connected.clear()

    def start(self, timeout: float = 10.0) -> str:
        """Connect (paho keeps retrying in the background); return the first CONNACK's reason."""
        self.client.connect_async(self.config.host, self.config.port, keepalive=30)
        self.client.loop_start()
        return self.connects.get(timeout=timeout)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, *topics: str) -> list[Any]:
        self.client.subscribe([(t, 1) for t in topics])
        return self._subscribed.get(timeout=5)

    def publish(self, name: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(name, payload, qos=1, retain=retain).wait_for_publish(timeout=5)

    def next(self, timeout: float = 5.0) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def collect(self, seconds: float) -> list[mqtt.MQTTMessage]:
        """Everything that arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        received = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                received.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return received

    def __enter__(self) -> MqttProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
