"""A fleet of simulated devices in one process: one real MQTT connection each, speaking the real protocol.

Each simulated device connects with its own client id (and its own broker password, where a credentials
file gives one), leaves a retained ``offline`` availability as its last will, says ``online``, reports
its state, follows its desired state and sends a telemetry window every ``telemetry_interval_s`` with
figures of a plausible model (latency around a per-device median, some errors, CPU, memory, disk).
A desired bundle is taken as the agent would report it: active after ``activation_s``, or (for
``fail_fraction`` of the devices) refused with an activation failure the rollout gates read. A sample
of the devices (``download_fraction``) fetches the bundle's manifest and files over the coordinator's
HTTP mirror and checks each file's sha256 before it reports the bundle active; the rest acknowledge
without downloading. ``offline_fraction`` of the devices drop off during the run and come back.

Used by bench/bench_fleet.py and by tests at fleet size; run it with ``edgefleet simulate``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import resource
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from edgefleet.protocol import histogram
from edgefleet.protocol.bundle import Manifest, SignedManifest
from edgefleet.protocol.control import read_unverified
from edgefleet.protocol.errors import BundleError, ProtocolError
from edgefleet.protocol.messages import (
    Availability,
    BundleRef,
    DesiredState,
    ErrorInfo,
    FailureKind,
    ReportedState,
    Telemetry,
)
from edgefleet.protocol.topics import Channel, topic

__all__ = ["SimulationResult", "SimulatorSettings", "simulate"]

log = logging.getLogger(__name__)

AGENT_VERSION = "simulated"


@dataclass
class SimulatorSettings:
    broker_url: str
    devices: int
    device_class: str = "x86-gateway"
    prefix: str = "sim"
    duration_s: float = 60.0
    telemetry_interval_s: float = 60.0
    activation_s: float = 1.0
    fail_fraction: float = 0.0
    offline_fraction: float = 0.0
    download_fraction: float = 0.0
    coordinator_url: str | None = None  # the HTTP mirror the download sample fetches from
    token: str | None = None  # a read-only API token for the mirror
    credentials: dict[str, str] = field(default_factory=dict)  # device id -> broker password
    connect_rate: float = 500.0  # new connections per second, so the broker is not hit by all at once
    seed: int = 0


@dataclass
class SimulationResult:
    devices: int
    connected: int = 0
    refused: int = 0
    desired_received: int = 0
    activated: int = 0
    failed: int = 0
    downloaded: int = 0
    download_errors: int = 0
    telemetry_sent: int = 0
    went_offline: int = 0
    converged: int = 0  # devices whose last desired bundle is the one they report active
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Device:
    def __init__(self, sim: _Simulation, device_id: str, rng: random.Random) -> None:
        self.sim, self.device_id, self.rng = sim, device_id, rng
        self.fails = rng.random() < sim.settings.fail_fraction
        self.downloads = rng.random() < sim.settings.download_fraction
        self.goes_offline = rng.random() < sim.settings.offline_fraction
        self.latency_ms = rng.lognormvariate(1.0, 0.4)  # this device's median latency
        self.active: BundleRef | None = None
        self.desired: DesiredState | None = None
        self.last_error: ErrorInfo | None = None
        self.client: Any = None
        self.started_at = datetime.now(UTC)

    async def connect(self) -> bool:
        from gmqtt import Client, Message
        from gmqtt.mqtt.constants import MQTTv311

        offline = Availability(device_id=self.device_id, state="offline").to_bytes()
        will = Message(topic(self.device_id, Channel.AVAILABILITY), offline, qos=1, retain=True)
        client = Client(self.device_id, clean_session=True, will_message=will)
        password = self.sim.settings.credentials.get(self.device_id)
        if password is not None:
            client.set_auth_credentials(self.device_id, password)
        client.on_message = self._on_message
        client.on_connect = self._on_connect
        url = urlsplit(self.sim.settings.broker_url)
        try:
            await client.connect(url.hostname or "127.0.0.1", url.port or 1883, keepalive=60, version=MQTTv311)
        except Exception as exc:
            log.debug("%s could not connect: %s", self.device_id, exc)
            return False
        self.client = client
        return True

    def _on_connect(self, client: Any, _flags: Any, _rc: Any, _props: Any) -> None:
        self.client = client  # called inside connect(), before it returns
        client.subscribe(topic(self.device_id, Channel.DESIRED), qos=1)
        self.publish(Channel.AVAILABILITY, Availability(device_id=self.device_id, state="online").to_bytes(),
                     retain=True)  # fmt: skip
        self.report("ready")

    def publish(self, channel: Channel, payload: bytes, *, retain: bool = False) -> None:
        if self.client is not None and self.client.is_connected:
            self.client.publish(topic(self.device_id, channel), payload, qos=1, retain=retain)

    def report(self, status: str) -> None:
        state = ReportedState(
            device_id=self.device_id, device_class=self.sim.settings.device_class, agent_version=AGENT_VERSION,
            status=status, active=self.active, desired_revision=self.desired.revision if self.desired else None,  # type: ignore[arg-type]
            runtime="onnxruntime-cpu" if self.active else None, last_error=self.last_error,
            started_at=self.started_at,
        )  # fmt: skip
        self.publish(Channel.REPORTED, state.to_bytes(), retain=True)

    def _on_message(self, _client: Any, name: str, payload: bytes, _qos: int, _props: Any) -> int:
        if not payload:
            return 0
        try:
            # A simulated device holds no command keys: it reads the (signed) desired state without checking it.
            desired = read_unverified(payload, "desired", topic=name)
            assert isinstance(desired, DesiredState)
        except ProtocolError as exc:
            log.warning("%s: refused desired state: %s", self.device_id, exc.reason)
            return 0
        if self.desired is not None and desired.revision <= self.desired.revision:
            return 0  # a retained copy of what it already has, or an older one
        self.desired = desired
        self.sim.result.desired_received += 1
        asyncio.get_running_loop().create_task(self._converge(desired))
        return 0

    async def _converge(self, desired: DesiredState) -> None:
        bundle = desired.bundle
        if bundle is None or (self.active is not None and self.active.digest == bundle.digest):
            self.report("ready")
            return
        self.report("downloading")
        if self.downloads and not self.fails:
            if not await asyncio.get_running_loop().run_in_executor(None, self.sim.download, bundle.digest):
                self.sim.result.download_errors += 1
                self.last_error = ErrorInfo(reason="simulated download failed", kind=FailureKind.DOWNLOAD,
                                            bundle_digest=bundle.digest)  # fmt: skip
                self.report("error")
                return
            self.sim.result.downloaded += 1
        await asyncio.sleep(self.sim.settings.activation_s * (0.5 + self.rng.random()))
        if self.desired is not desired:
            return  # superseded meanwhile
        if self.fails:
            self.last_error = ErrorInfo(reason="simulated activation failure: self-test failed",
                                        kind=FailureKind.REFUSED, bundle_digest=bundle.digest)  # fmt: skip
            self.sim.result.failed += 1
            self.report("error")
            return
        self.active, self.last_error = bundle, None
        self.sim.result.activated += 1
        self.report("ready")

    def telemetry(self, window_s: float) -> None:
        rng = self.rng
        count = rng.randint(0, 120)
        errors = sum(1 for _ in range(count) if rng.random() < 0.002)
        latencies = [self.latency_ms * rng.lognormvariate(0, 0.25) for _ in range(min(count - errors, 50))]
        counts: dict[int, int] = {}
        for latency in latencies:
            bucket = histogram.bucket_of(latency)
            counts[bucket] = counts.get(bucket, 0) + 1
        p50, p95, p99 = histogram.quantiles(counts, (0.5, 0.95, 0.99)) if counts else (None, None, None)
        report = Telemetry(
            device_id=self.device_id, window_s=window_s, bundle_digest=self.active.digest if self.active else None,
            runtime="onnxruntime-cpu" if self.active else None, inference_count=count - errors, error_count=errors,
            errors_by_kind={"runtime": errors} if errors else {},
            latency_ms_mean=sum(latencies) / len(latencies) if latencies else None,
            latency_ms_p50=p50, latency_ms_p95=p95, latency_ms_p99=p99, latency_histogram=counts,
            cpu_percent=rng.uniform(1, 30), device_cpu_percent=rng.uniform(5, 60),
            memory_used_percent=rng.uniform(20, 70), rss_bytes=rng.randint(40, 90) << 20,
            soc_temp_c=rng.uniform(40, 70), disk_used_percent=rng.uniform(10, 60), disk_free_bytes=8 << 30,
            outbox_pending=0,
        )  # fmt: skip
        self.publish(Channel.TELEMETRY, report.to_bytes())
        self.sim.result.telemetry_sent += 1

    async def drop_off(self, away_s: float) -> None:
        """Go offline (the coordinator sees the availability the last will would leave) and come back."""
        self.publish(Channel.AVAILABILITY, Availability(device_id=self.device_id, state="offline").to_bytes(),
                     retain=True)  # fmt: skip
        await self.client.disconnect()
        self.client = None
        self.sim.result.went_offline += 1
        await asyncio.sleep(away_s)
        await self.connect()

    async def close(self) -> None:
        if self.client is not None:
            self.publish(Channel.AVAILABILITY, Availability(device_id=self.device_id, state="stopped").to_bytes(),
                         retain=True)  # fmt: skip
            await self.client.disconnect()


class _Simulation:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.result = SimulationResult(devices=settings.devices)

    def download(self, digest: str) -> bool:
        """The bundle's manifest and each file it lists, from the coordinator's HTTP mirror, hash-checked."""
        base = (self.settings.coordinator_url or "").rstrip("/")
        if not base:
            return False
        headers = {"Authorization": f"Bearer {self.settings.token}"} if self.settings.token else {}
        try:
            signed = SignedManifest.from_bytes(_get(f"{base}/api/v1/artifacts/manifest/{digest}", headers))
            if signed.digest != digest:
                return False
            for entry in Manifest.model_validate_json(signed.manifest).files:
                data = _get(f"{base}/api/v1/artifacts/file/{entry.sha256}", headers)
                if hashlib.sha256(data).hexdigest() != entry.sha256:
                    return False
        except (OSError, ValueError, BundleError) as exc:
            log.warning("simulated download of %s failed: %s", digest[:12], exc)
            return False
        return True


def _get(url: str, headers: dict[str, str]) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
        return bytes(response.read())


def _raise_open_files_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning("open files limit %d is below %d: some simulated devices will not connect", target, wanted)


async def _run(settings: SimulatorSettings) -> SimulationResult:
    sim = _Simulation(settings)
    rng = random.Random(settings.seed)
    devices = [_Device(sim, f"{settings.prefix}-{n:05d}", random.Random(rng.random())) for n in range(settings.devices)]
    started = time.monotonic()
    for n, device in enumerate(devices):  # at connect_rate a second
        if await device.connect():
            sim.result.connected += 1
        else:
            sim.result.refused += 1
        delay = started + (n + 1) / settings.connect_rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    interval = settings.telemetry_interval_s
    next_window = {d.device_id: started + rng.uniform(0, interval) for d in devices}  # spread over the interval
    offline_at = started + settings.duration_s / 3
    deadline = started + settings.duration_s
    dropped = False
    while (now := time.monotonic()) < deadline:
        for device in devices:
            if device.client is not None and now >= next_window[device.device_id]:
                device.telemetry(interval)
                next_window[device.device_id] = now + interval
        if not dropped and now >= offline_at:
            dropped = True
            for device in devices:
                if device.goes_offline and device.client is not None:
                    asyncio.get_running_loop().create_task(device.drop_off(settings.duration_s / 6))
        await asyncio.sleep(min(0.5, max(0.01, deadline - now)))
    for device in devices:
        await device.close()
    sim.result.converged = sum(
        1 for d in devices
        if d.desired is not None and d.desired.bundle is not None and d.active is not None
        and d.active.digest == d.desired.bundle.digest
    )  # fmt: skip
    sim.result.seconds = round(time.monotonic() - started, 1)
    return sim.result


def simulate(settings: SimulatorSettings) -> SimulationResult:
    """Run the simulated fleet for ``settings.duration_s`` and say what happened."""
    _raise_open_files_limit(settings.devices + 256)
    return asyncio.run(_run(settings))
