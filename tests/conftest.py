"""Fixtures on real parts: a Mosquitto per test on a free port, real keys, real trained models."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet
from edgefleet.protocol.signing import load_private_key, write_keypair


@dataclass
class Keys:
    private: Path
    public: Path

    def private_key(self):  # type: ignore[no-untyped-def]
        return load_private_key(self.private)


def _make_keys(folder: Path) -> Keys:
    return Keys(*write_keypair(folder))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """For modules of tiny models: threads cost more than they give, and a lot on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return _make_keys(tmp_path / "keys")


@pytest.fixture
def other_keys(tmp_path: Path) -> Keys:
    return _make_keys(tmp_path / "other-keys")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[LocalBroker]:
    """A real Mosquitto on a free loopback port with its own config; stopped after the test."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed: apt-get install mosquitto (.ci/run does this)")
    broker = LocalBroker(tmp_path / "broker", prefer="mosquitto").start()
    yield broker
    broker.stop()


@dataclass
class DigitsModels:
    """Two real versions of a digits classifier as ONNX files, and held-out data."""

    v1: Path
    v2: Path
    x_test: np.ndarray
    y_test: np.ndarray


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsModels:
    from edgefleet.compression.export import export_onnx
    from edgefleet.local.digits import load_digits_data, train_digits_mlp

    folder = tmp_path_factory.mktemp("digits")
    data = load_digits_data()
    paths = []
    for version, (hidden, seed) in enumerate(((32, 0), (48, 1)), start=1):
        model, _ = train_digits_mlp(data, hidden=hidden, epochs=10, seed=seed)
        import torch

        paths.append(
            export_onnx(
                model,
                torch.from_numpy(data.x_test[:1]),
                folder / f"v{version}.onnx",
                input_name="pixels",
                output_name="logits",
            )
        )
    return DigitsModels(paths[0], paths[1], data.x_test, data.y_test)


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: LocalBroker, keys: Keys) -> Iterator[LocalFleet]:
    workdir = tmp_path / "fleet"
    workdir.mkdir()
    fleet = LocalFleet(workdir, mosquitto.url, [keys.public])
    yield fleet
    fleet.stop()


def build(model: Path, out: Path, keys: Keys, *, version: str, device_class: str = "x86-gateway", **kw):  # type: ignore[no-untyped-def]
    """Build and sign a bundle; return (path, digest)."""
    from edgefleet.compression.builder import build_bundle

    return build_bundle(
        model,
        out,
        name="digits",
        version=version,
        device_class=device_class,
        private_key=keys.private_key(),
        **kw,
    )


COORDINATOR_USER = "edgefleet-coordinator"


@dataclass
class SecuredBroker:
    """A Mosquitto that reads password and ACL files rendered by the coordinator's BrokerAuth."""

    broker: LocalBroker
    auth: Any  # coordinator.config.BrokerAuthConfig, with a reload_command that HUPs this broker
    username: str
    password: str

    @property
    def url(self) -> str:
        return self.broker.url


def broker_auth_lines(auth: Any) -> str:
    """Mosquitto config lines that read the files; as root the broker keeps root to read them in tmp_path."""
    return f"user root\npassword_file {auth.password_file}\nacl_file {auth.acl_file}"


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[SecuredBroker]:
    """A real Mosquitto with password_file and acl_file that only the coordinator's user can use at first."""
    from edgefleet.coordinator.config import BrokerAuthConfig
    from edgefleet.coordinator.security.broker_auth import BrokerAuth

    folder = tmp_path / "broker-auth"
    password = "coordinator-password-0123456789"
    auth = BrokerAuthConfig(password_file=folder / "passwd", acl_file=folder / "acl")
    BrokerAuth(auth, username=COORDINATOR_USER, password=password).apply({})
    broker = LocalBroker(
        tmp_path / "broker",
        prefer="mosquitto",
        extra_config=broker_auth_lines(auth),
    ).start()
    assert broker.proc is not None
    auth = auth.model_copy(update={"reload_command": ["kill", "-HUP", str(broker.proc.pid)]})
    yield SecuredBroker(broker, auth, COORDINATOR_USER, password)
    broker.stop()


POSTGRES = "postgresql://postgres@127.0.0.1:5432"  # trust auth on every machine of this project (FACTS.md)


def postgres_unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        psycopg.connect(f"{POSTGRES}/postgres", connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        return f"no PostgreSQL server answers at {POSTGRES}: {' '.join(str(exc).split())[:160]}"
    return None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped afterwards (skipped, with the reason, without a server)."""
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    import psycopg

    name = f"edgefleet_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(params=["sqlite", "postgres"])
def fleet_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A fresh FleetStore of each backend: a SQLite file, and a PostgreSQL database of its own."""
    if request.param == "sqlite":
        from edgefleet.coordinator.store.sqlite import SQLiteStore

        store: Any = SQLiteStore(tmp_path / "fleet.db")
    else:
        from edgefleet.coordinator.store.postgres import PostgresStore

        store = PostgresStore(request.getfixturevalue("postgres_url"))
    yield store
    store.close()
