"""MQTT over TLS by configuration: a real Mosquitto TLS listener, the agent's own paho client."""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.common.mqtt import BrokerConfig, make_client
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import wait_until
from tests.mqtt_probe import MqttProbe


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(folder: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def _server_cert(folder: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("edgefleet test broker"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[LocalBroker, Path, Path]]:
    """Mosquitto whose only listener speaks TLS with a certificate from a fresh CA; yields (broker, CA, other CA)."""
    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key, ca, ca_path = _ca(folder, "fleet-ca")
    _, _, other_ca_path = _ca(folder, "other-ca")
    cert, key = _server_cert(folder, ca_key, ca)
    # `user root`: as root the broker keeps root to read the key from tmp_path.
    extra = f"user root\ncafile {ca_path}\ncertfile {cert}\nkeyfile {key}"
    broker = LocalBroker(tmp_path / "broker", prefer="mosquitto", extra_config=extra).start()
    yield broker, ca_path, other_ca_path
    broker.stop()


def test_agent_client_connects_over_tls_with_the_ca(tls_broker: tuple[LocalBroker, Path, Path]) -> None:
    broker, ca, _ = tls_broker
    url = f"mqtts://127.0.0.1:{broker.port}"
    with MqttProbe(url, client_id="tls-probe", ca_file=ca) as probe:
        assert probe.start() == "Success"
        probe.subscribe("edgefleet/v1/tls-check")
        probe.publish("edgefleet/v1/tls-check", b"over tls")
        assert probe.next().payload == b"over tls"


@pytest.mark.parametrize("which", ["system CAs", "another CA"])
def test_tls_is_refused_without_the_brokers_ca(tls_broker: tuple[LocalBroker, Path, Path], which: str) -> None:
    broker, _, other_ca = tls_broker
    config = BrokerConfig(url=f"mqtts://127.0.0.1:{broker.port}", ca_file=other_ca if which == "another CA" else None)
    client = make_client(config, "tls-untrusting", clean_session=True)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        client.connect(config.host, config.port)


def test_plain_mqtt_to_a_tls_listener_gets_no_session(tls_broker: tuple[LocalBroker, Path, Path]) -> None:
    broker, _, _ = tls_broker
    with MqttProbe(f"mqtt://127.0.0.1:{broker.port}", client_id="plain-probe") as probe:
        probe.client.connect_async("127.0.0.1", broker.port)
        probe.client.loop_start()
        assert not probe.connected.wait(1.0)


def test_the_coordinators_telemetry_connection_speaks_tls(
    tmp_path: Path, tls_broker: tuple[LocalBroker, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    from edgefleet.protocol.messages import Telemetry
    from edgefleet.protocol.topics import Channel, topic
    from tests.test_ingest_link import Ingest

    broker, ca, other_ca = tls_broker
    url = f"mqtts://127.0.0.1:{broker.port}"
    # Refused without the broker's CA: retried in the background, never subscribed.
    untrusting = Ingest(tmp_path / "refused.db", BrokerConfig(url=url, ca_file=other_ca))
    untrusting.queue.start()
    untrusting.link.start()
    try:
        refused = lambda: [r for r in caplog.records if "telemetry connection to" in r.getMessage()]  # noqa: E731
        wait_until(refused, timeout=10, what="the refused TLS connection reported")
        assert "failed" in refused()[0].getMessage()
        assert not untrusting.link.subscribed.is_set()
    finally:
        untrusting.link.stop()
        untrusting.queue.stop()
    # With it: subscribed, and a report sent over TLS is stored.
    with Ingest(tmp_path / "fleet.db", BrokerConfig(url=url, ca_file=ca)) as ingest:
        report = Telemetry(device_id="dev-1", window_s=1.0, inference_count=5, error_count=0)
        with MqttProbe(url, client_id="tls-device", ca_file=ca) as device:
            assert device.start() == "Success"
            device.publish(topic("dev-1", Channel.TELEMETRY), report.to_bytes())
            wait_until(lambda: ingest.stored() == 1, timeout=10, what="report over TLS")
