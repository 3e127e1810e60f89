"""A paho-mqtt client set up from a BrokerConfig; shared by the agent and the coordinator."""

from __future__ import annotations

import random
import socket
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.config import BrokerConfig

__all__ = ["make_client"]


def _no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    # Request/response traffic (chunk requests) otherwise waits ~40 ms per round trip on
    # Nagle's algorithm meeting delayed ACKs; measured 44 ms -> 0.6 ms on loopback.
    if hasattr(sock, "setsockopt"):  # not on websocket wrappers
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(broker: BrokerConfig, client_id: str, *, clean_session: bool) -> mqtt.Client:
    """MQTT 3.1.1 client with credentials, TLS, TCP_NODELAY and reconnect backoff from ``broker``."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session, protocol=mqtt.MQTTv311
    )
    if broker.username:
        client.username_pw_set(broker.username, broker.resolved_password())
    if broker.tls:
        client.tls_set(ca_certs=str(broker.ca_file) if broker.ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
    client.on_socket_open = _no_delay
    # paho doubles the delay after each failed try; a random first delay per client spreads a
    # fleet's reconnects out after a broker restart instead of having them arrive in lockstep.
    client.reconnect_delay_set(min_delay=random.uniform(1.0, 3.0), max_delay=60)  # type: ignore[arg-type]
    return client
