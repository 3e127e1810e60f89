"""`edgefleet agent doctor`: what an agent needs to do its work, checked one by one, each ok or a problem with why.

It reads the agent's config, data dir and broker the way the agent does, and changes none of them: the
store and the outbox are read without writing, a desired state is judged by the agent's own rules
(agent/mqtt/control.py) against a copy of its floor, and the broker sees one short connection with the
agent's credentials under a client id of its own, without a last will. On a broker that sets the client id
from the user name (Mosquitto's ``use_username_as_clientid``) that connection takes the running agent's
place for the moment it lasts: the broker then publishes the agent's last will and the agent reconnects
within seconds.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.device_class import load_device_class
from edgefleet.agent.errors import AgentError
from edgefleet.agent.mqtt.control import FLOOR_FILE, ControlVerifier
from edgefleet.agent.runtimes import skip_reason
from edgefleet.common.errors import ConfigError
from edgefleet.common.mqtt import diagnose, make_client
from edgefleet.firmware_configs import CONFIG_DIR
from edgefleet.protocol.bundle import Manifest
from edgefleet.protocol.control import ControlKind, read_unverified
from edgefleet.protocol.errors import BundleError, ProtocolError
from edgefleet.protocol.messages import CoordinatorStatus, DesiredState, parse
from edgefleet.protocol.signing import TrustedKeys, load_trusted_keys
from edgefleet.protocol.topics import COORDINATOR_STATUS, Channel, device_subscriptions, topic

__all__ = ["MAX_LAG_S", "OUTBOX_STUCK_S", "Check", "Trouble", "run_checks"]

OUTBOX_STUCK_S = 300.0  # a pending message older than this: the outbox is not draining
MAX_LAG_S = 60.0  # a coordinator message stamped this far ahead of this clock: the clock is behind
_BROKER_TIMEOUT_S = 5.0


class Trouble(StrEnum):
    """What kind of problem a check found; the CLI turns it into an exit code."""

    UNREACHABLE = "unreachable"  # broker not reached or login refused; no coordinator on it
    BUNDLE = "bundle"  # the active bundle fails verification
    STATE = "state"  # anything else: not converged, outbox stuck, clock, no runtime, agent not answering


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    trouble: Trouble | None = None  # set when not ok

    @classmethod
    def good(cls, name: str, detail: str) -> Check:
        return cls(name, True, detail)

    @classmethod
    def bad(cls, name: str, detail: str, trouble: Trouble = Trouble.STATE) -> Check:
        return cls(name, False, detail, trouble)

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": "ok" if self.ok else "problem", "detail": self.detail}


@dataclass
class _BrokerView:
    """What one connection saw: the retained messages of the agent's subscriptions, and when."""

    received_at: datetime
    retained: dict[str, bytes] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # subscriptions the broker's ACL refused


class _BrokerTrouble(AgentError):
    """The doctor's connection did not get through; ``reason`` says where it stopped."""


def _now() -> datetime:
    return datetime.now(UTC)


def _ago(when: datetime, now: datetime) -> str:
    seconds = (now - when).total_seconds()
    return f"{when.isoformat(timespec='seconds')}, {seconds:.0f} s ago" if seconds >= 0 else when.isoformat()


def _watch_broker(config: AgentConfig, timeout_s: float) -> _BrokerView:
    """Log in as the agent, subscribe as it does, and collect the retained messages; _BrokerTrouble if not."""
    broker = config.broker
    try:
        password = broker.resolved_password()
    except OSError as exc:
        raise _BrokerTrouble(f"cannot read the broker password ({broker.password_file}): {exc.strerror}") from None
    if broker.password_file is not None and not password:
        raise _BrokerTrouble(f"the broker password file {broker.password_file} is empty")
    try:
        client = make_client(broker, f"edgefleet-doctor-{config.device_id}-{uuid.uuid4().hex[:8]}", clean_session=True)
    except (OSError, ValueError) as exc:  # the TLS settings: ca_file missing, unreadable or not PEM
        raise _BrokerTrouble(f"cannot set up TLS with ca_file {broker.ca_file}: {exc}") from None
    connected = threading.Event()
    refusal: list[str] = []
    view = _BrokerView(received_at=_now())
    wanted = device_subscriptions(config.device_id)
    acks: dict[int, list[Any]] = {}  # SUBACK reason codes by message id
    acked = threading.Condition()

    def on_connect(_c: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            refusal.append(str(reason))
        connected.set()

    def on_subscribe(_c: mqtt.Client, _ud: Any, mid: int, codes: list[Any], _props: Any) -> None:
        with acked:
            acks[mid] = list(codes)
            acked.notify_all()

    def on_message(_c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            view.retained[msg.topic] = bytes(msg.payload)

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    try:
        client.connect(broker.host, broker.port, keepalive=broker.keepalive_s)
    except (OSError, ValueError):
        raise _BrokerTrouble(diagnose(broker, timeout_s=timeout_s)) from None
    client.loop_start()
    try:
        if not connected.wait(timeout_s):
            raise _BrokerTrouble(f"{broker.host}:{broker.port} did not answer the MQTT login within {timeout_s:.0f} s")
        if refusal:
            raise _BrokerTrouble(
                f"the broker refused the login of user {broker.username!r}: {refusal[0]} (check broker.username "
                f"and {'the password in broker.password_file' if broker.password_file else 'broker.password'})"
            )
        _rc, first = client.subscribe([(t, 1) for t in wanted])
        # A second subscription as a barrier: its SUBACK comes after the retained messages of the first.
        _rc, barrier = client.subscribe(topic(config.device_id, Channel.COMMANDS), qos=1)
        if first is None or barrier is None:
            raise _BrokerTrouble("logged in, but the connection closed before the subscriptions went out")
        with acked:
            if not acked.wait_for(lambda: first in acks and barrier in acks, timeout_s):
                raise _BrokerTrouble(f"logged in, but no answer to the subscriptions within {timeout_s:.0f} s")
        view.refused = [t for t, code in zip(wanted, acks[first], strict=False) if code.is_failure]
        view.received_at = _now()
        return view
    finally:
        client.disconnect()
        client.loop_stop()


def _broker_check(config: AgentConfig, view: _BrokerView | None, trouble: str | None) -> Check:
    broker = config.broker
    if view is None:
        return Check.bad("broker", f"{broker.url}: {trouble}", Trouble.UNREACHABLE)
    if view.refused:
        return Check.bad(
            "broker", f"{broker.url}: logged in, but the broker's ACL refuses {', '.join(view.refused)}",
            Trouble.UNREACHABLE,
        )  # fmt: skip
    how = f"as {broker.username!r}" if broker.username else "anonymously"
    tls = f", TLS verified against {broker.ca_file or 'the system CAs'}" if broker.tls else ""
    return Check.good("broker", f"{broker.url}: logged in {how}{tls}; subscriptions accepted")


def _coordinator_check(config: AgentConfig, view: _BrokerView | None) -> Check:
    if view is None:
        return Check.bad("coordinator", "not checked: no connection to the broker", Trouble.UNREACHABLE)
    raw = view.retained.get(COORDINATOR_STATUS)
    if raw:
        try:
            status = parse(CoordinatorStatus, raw, topic=COORDINATOR_STATUS)
        except ProtocolError as exc:
            return Check.bad("coordinator", f"its status on {COORDINATOR_STATUS} is invalid: {exc.reason}")
        since = _ago(status.sent_at, view.received_at)
        if status.state == "online":
            return Check.good("coordinator", f"online (since {since})")
        return Check.bad("coordinator", f"offline (since {since}); the outbox holds messages until it is back",
                         Trouble.UNREACHABLE)  # fmt: skip
    desired = view.retained.get(topic(config.device_id, Channel.DESIRED))
    if desired:
        return Check.good("coordinator", "it announces no status, but has published this device's desired state")
    return Check.bad(
        "coordinator", f"no sign of one on this broker: no status on {COORDINATOR_STATUS} and no desired state for "
        f"{config.device_id} (is the coordinator connected to {config.broker.url}?)", Trouble.UNREACHABLE,
    )  # fmt: skip


def _judge_desired(config: AgentConfig, payload: bytes, trusted_commands: TrustedKeys) -> DesiredState:
    """The desired state as the agent would take it, or ProtocolError with why it would refuse it. The agent's
    verifier keeps a floor (the highest revision accepted) in the data dir; it works here on a copy."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-doctor-") as scratch:
        floor = Path(scratch) / FLOOR_FILE
        if (config.data_dir / FLOOR_FILE).is_file():
            shutil.copyfile(config.data_dir / FLOOR_FILE, floor)
        verifier = ControlVerifier(config.device_id, trusted_commands, floor)
        return verifier.desired(payload, topic=topic(config.device_id, Channel.DESIRED))


def _desired_check(config: AgentConfig, view: _BrokerView | None, state: dict[str, Any] | None) -> Check:
    if view is None:
        return Check.bad("desired state", "not checked: no connection to the broker", Trouble.UNREACHABLE)
    payload = view.retained.get(topic(config.device_id, Channel.DESIRED))
    if not payload:
        return Check.good("desired state", "none: the coordinator has assigned this device no bundle")
    try:
        desired = _judge_desired(config, payload, load_trusted_keys(config.command_keys))
    except ProtocolError as exc:
        return Check.bad("desired state", f"the agent refuses the retained desired state: {exc.reason}")
    except OSError as exc:
        return Check.bad("desired state", f"cannot read the command keys: {exc}")
    target = desired.bundle
    unsigned = "" if config.command_keys else " (unsigned: without command_keys anyone who may publish here chooses)"
    if target is None:
        return Check.good("desired state", f"revision {desired.revision}: no bundle{unsigned}")
    wants = f"revision {desired.revision} wants {target.name} {target.version} ({target.digest[:12]})"
    if state is not None and state.get("active") == target.digest:
        return Check.good("desired state", f"{wants}: active{unsigned}")
    refusal = (state or {}).get("refused", {}).get(target.digest)
    if refusal is not None:
        return Check.bad("desired state", f"{wants}: refused: {refusal.get('reason')}")
    running = (state or {}).get("active")
    return Check.bad(
        "desired state", f"{wants}, not active yet (running {running[:12] if running else 'nothing'}); "
        "the agent may still be downloading it: see its reported status",
    )  # fmt: skip


def _read_state(config: AgentConfig) -> tuple[dict[str, Any] | None, str | None]:
    """The store's state file as the agent wrote it, without creating anything; (None, why) if unreadable."""
    path = config.data_dir / "store" / "state.json"
    if not path.parent.is_dir():
        return None, f"not checked: no model store in {config.data_dir} (the agent has not run with this data dir)"
    if not path.exists():
        return {}, None
    try:
        from edgefleet.agent.bundles.store import StoreState

        state = StoreState.from_json(path.read_bytes())
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror}"
    except (ValueError, TypeError) as exc:
        return None, f"{path} is damaged: {exc}"
    return {"active": state.active, "previous": state.previous, "refused": state.refused}, None


def _bundle_check(config: AgentConfig, state: dict[str, Any] | None, why: str | None) -> tuple[Check, Manifest | None]:
    if state is None:
        return Check.bad("active bundle", why or "no store"), None  # not a verdict on a bundle
    digest = state.get("active")
    if digest is None:
        return Check.good("active bundle", "none: the agent serves no model yet"), None
    from edgefleet.agent.bundles.store import ModelStore

    root = config.data_dir / "store"
    if not all((root / sub).is_dir() for sub in ("blobs", "manifests", "partial")):
        return Check.bad("active bundle", f"the store {root} lacks its folders"), None
    try:
        trusted = load_trusted_keys(config.trusted_keys)
        manifest = ModelStore(root).verified_bundle(digest, trusted)
    except BundleError as exc:
        return Check.bad("active bundle", f"{digest[:12]} fails verification: {exc.reason}", Trouble.BUNDLE), None
    except (OSError, ProtocolError, ValidationError) as exc:
        return Check.bad("active bundle", f"{digest[:12]} cannot be checked: {exc}"), None
    files = len(manifest.files)
    return Check.good(
        "active bundle", f"{manifest.name} {manifest.version} ({digest[:12]}): signature and {files} file hash(es) ok"
    ), manifest


def _runtime_check(config: AgentConfig, manifest: Manifest | None, serving: str | None) -> Check:
    try:
        device_class = load_device_class(config.device_class, config.device_class_dir or CONFIG_DIR)
    except ConfigError as exc:
        return Check.bad("runtime", f"device class {config.device_class!r}: {exc}")
    model_format = manifest.model_format if manifest is not None else "onnx"
    chain = device_class.runtime.chain
    skipped: list[str] = []
    for key in chain:
        reason = skip_reason(key, model_format)
        if reason is None:
            said = f"{key} for {model_format} models (chain {' -> '.join(chain)})"
            if skipped:
                said += "; skipped: " + "; ".join(skipped)
            if serving and serving != key:
                said += f"; the running agent serves on {serving} (the first one failed to load the model?)"
            return Check.good("runtime", said)
        skipped.append(reason)
    return Check.bad("runtime", f"no runtime of {' -> '.join(chain)} can serve {model_format} models: "
                     + "; ".join(skipped))  # fmt: skip


def _outbox_check(config: AgentConfig, now: float) -> Check:
    path = config.data_dir / "outbox.db"
    if not path.exists():
        return Check.good("outbox", "empty (no outbox yet)")
    try:  # read only: the agent owns the file, and a damaged one is its to move aside
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0) as db:
            count, size, oldest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created_at) FROM messages"
            ).fetchone()
            dropped = dict(db.execute("SELECT channel, count FROM dropped WHERE count > 0").fetchall())
    except sqlite3.Error as exc:
        return Check.bad("outbox", f"cannot read {path}: {exc}")
    evicted = f"; evicted so far: {dropped}" if dropped else ""
    if not count:
        return Check.good("outbox", f"empty{evicted}")
    age = now - oldest
    said = f"{count} message(s), {size} bytes waiting, the oldest {age:.0f} s old{evicted}"
    if age > OUTBOX_STUCK_S:
        return Check.bad("outbox", f"not draining: {said}")
    return Check.good("outbox", said)


def _clock_check(config: AgentConfig, view: _BrokerView | None) -> Check:
    if view is None:
        return Check.bad("clock", "not checked: no connection to the broker (only the coordinator's messages tell)",
                         Trouble.UNREACHABLE)  # fmt: skip
    stamps: list[tuple[str, datetime]] = []
    status = view.retained.get(COORDINATOR_STATUS)
    if status:
        with contextlib.suppress(ProtocolError):  # the coordinator check says why
            stamps.append(("status", parse(CoordinatorStatus, status).sent_at))
    kinds: tuple[tuple[Channel, ControlKind, str], ...] = (
        (Channel.DESIRED, "desired", "desired state"), (Channel.CAMPAIGN, "campaign", "campaign assignment"),
    )  # fmt: skip
    for channel, kind, name in kinds:
        payload = view.retained.get(topic(config.device_id, channel))
        if payload:
            with contextlib.suppress(ProtocolError):  # the desired-state check says why
                stamps.append((name, read_unverified(payload, kind).sent_at))
    if not stamps:
        return Check.bad("clock", "not checked: no message from the coordinator carries its time")
    name, newest = max(stamps, key=lambda s: s[1])
    lead = (newest - view.received_at).total_seconds()
    if lead > MAX_LAG_S:
        return Check.bad("clock", f"this clock is at least {lead:.0f} s behind the coordinator's: its {name} is "
                         f"stamped {newest.isoformat(timespec='seconds')}, ahead of now")  # fmt: skip
    return Check.good(
        "clock", f"no sign of skew: the coordinator's newest message ({name}) was sent {-lead:.0f} s before this "
        "clock's now (a retained message only shows whether this clock is behind)",
    )  # fmt: skip


def _agent_check(config: AgentConfig) -> tuple[Check, str | None]:
    import grpc

    from edgefleet.agent.serving.client import InferenceClient

    target = f"unix://{config.socket_path}"
    if not config.socket_path.exists():
        return Check.bad("agent", f"no socket at {config.socket_path}: the agent is not running"), None
    with InferenceClient(target) as client:
        try:
            info = client.model_info(timeout=3.0)
        except grpc.RpcError as exc:
            return Check.bad("agent", f"does not answer at {target}: {exc.details()}"), None
    if not info.loaded:
        return Check.good("agent", f"answers at {target}, serves no model"), None
    said = f"answers at {target}: {info.model_name} {info.model_version} ({info.bundle_digest[:12]}) on {info.runtime}"
    return Check.good("agent", said), info.runtime


def _unreadable(name: str, exc: OSError) -> Check:
    where = f"{exc.filename}: " if exc.filename else ""
    return Check.bad(name, f"cannot read {where}{exc.strerror or exc} (run it as root or as the agent's user)")


def run_checks(
    config: AgentConfig, *, broker_timeout_s: float = _BROKER_TIMEOUT_S, clock: Callable[[], float] = time.time
) -> list[Check]:
    """Every check, in the order a reader follows them: the agent, its broker and coordinator, what it should
    run and what it runs, what waits to be sent, the clock. A file this user may not read is that check's
    problem, not the end of the others."""
    try:
        agent, serving = _agent_check(config)
    except OSError as exc:
        agent, serving = _unreadable("agent", exc), None
    view: _BrokerView | None = None
    trouble: str | None = None
    try:
        view = _watch_broker(config, broker_timeout_s)
    except _BrokerTrouble as exc:
        trouble = exc.reason
    try:
        state, why = _read_state(config)
        bundle, manifest = _bundle_check(config, state, why)
    except OSError as exc:
        state, manifest, bundle = None, None, _unreadable("active bundle", exc)
    checks = [agent, _broker_check(config, view, trouble), _coordinator_check(config, view)]
    later: list[tuple[str, Callable[[], Check]]] = [
        ("desired state", lambda: _desired_check(config, view, state)),
        ("active bundle", lambda: bundle),
        ("runtime", lambda: _runtime_check(config, manifest, serving)),
        ("outbox", lambda: _outbox_check(config, clock())),
    ]
    for name, check in later:
        try:
            checks.append(check())
        except OSError as exc:
            checks.append(_unreadable(name, exc))
    checks.append(_clock_check(config, view))
    return checks
