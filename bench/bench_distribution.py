"""Distribute one bundle to many devices over a real broker: time, coordinator load, bytes sent.

Run by hand: python bench/bench_distribution.py [--devices 500] [--processes 5] [--bundle-mb 20]

Devices are simulated (no ONNX Runtime, no gRPC): each is a real paho MQTT connection that
reports its state, takes its desired state, downloads the bundle with the agent's own windowed
ChunkFetcher, checks every hash and reports the bundle active. The coordinator is the real one,
in its own process. Bytes sent are read from the coordinator's Prometheus counter.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import re
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from edgefleet.agent.bundles.fetcher import ChunkFetcher
from edgefleet.common.mqtt import BrokerConfig, make_client
from edgefleet.compression.builder import build_bundle
from edgefleet.local.broker import LocalBroker
from edgefleet.local.chaos import padded_identity_model
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.bundle import Manifest, SignedManifest
from edgefleet.protocol.control import read_unverified
from edgefleet.protocol.messages import BundleRef, DesiredState, ReportedState, decode_chunk
from edgefleet.protocol.signing import load_private_key, write_keypair
from edgefleet.protocol.topics import RETAINED, Channel, device_subscriptions, topic

DEVICE_CLASS = "x86-gateway"


class SimDevice:
    def __init__(self, device_id: str, broker: BrokerConfig, workdir: Path) -> None:
        self.device_id = device_id
        self.workdir = workdir
        self.started = datetime.now(UTC)
        self.client = make_client(broker, f"sim-{device_id}", clean_session=True)
        self.fetcher = ChunkFetcher(device_id, self._request, chunk_bytes=64 * 1024, timeout_s=30, retries=5, window=8)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.desired: DesiredState | None = None
        self.wake = threading.Event()
        self.active: BundleRef | None = None
        self.broker = broker

    def _request(self, request: object) -> bool:
        return self.client.publish(topic(self.device_id, Channel.CHUNK_REQUESTS), request.to_bytes(), qos=1).rc == 0  # type: ignore[attr-defined]

    def report(self, status: str) -> None:
        state = ReportedState(
            device_id=self.device_id, device_class=DEVICE_CLASS, agent_version="sim", status=status,  # type: ignore[arg-type]
            active=self.active, started_at=self.started,
        )  # fmt: skip
        self.client.publish(
            topic(self.device_id, Channel.REPORTED), state.to_bytes(), qos=1, retain=Channel.REPORTED in RETAINED
        )

    def _on_connect(self, client, _u, _f, _r, _p) -> None:  # type: ignore[no-untyped-def]
        client.subscribe([(t, 1) for t in device_subscriptions(self.device_id)])
        self.report("idle")

    def _on_message(self, _c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.topic.endswith("/desired") and msg.payload:
            desired = read_unverified(msg.payload, "desired")  # a bench device holds no command keys
            assert isinstance(desired, DesiredState)
            self.desired = desired
            self.wake.set()
        elif msg.topic.endswith("/chunks/data"):
            self.fetcher.on_chunk(*decode_chunk(msg.payload))

    def run(self, stop: threading.Event) -> None:
        self.client.connect_async(self.broker.host, self.broker.port)
        self.client.loop_start()
        while not stop.is_set():
            if not self.wake.wait(0.5):
                continue
            self.wake.clear()
            desired = self.desired
            if (
                desired is None
                or desired.bundle is None
                or (self.active and self.active.digest == desired.bundle.digest)
            ):
                continue
            ref = desired.bundle
            manifest_path = self.fetcher.fetch("manifest", ref.digest, self.workdir / f"{self.device_id}.m", stop)
            signed = SignedManifest.from_bytes(manifest_path.read_bytes())
            manifest = Manifest.model_validate_json(signed.manifest)
            for entry in manifest.files:
                part = self.fetcher.fetch("file", entry.sha256, self.workdir / f"{self.device_id}.f", stop)
                digest = hashlib.sha256(part.read_bytes()).hexdigest()
                part.unlink()
                if digest != entry.sha256:
                    raise RuntimeError(f"{self.device_id}: hash mismatch")
            manifest_path.unlink()
            self.active = ref
            self.report("ready")
        self.client.loop_stop()


def _process(ids: list[str], url: str, workdir: str, seconds: float) -> None:
    stop = threading.Event()
    devices = [SimDevice(i, BrokerConfig(url=url), Path(workdir)) for i in ids]
    threads = [threading.Thread(target=d.run, args=(stop,), daemon=True) for d in devices]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--bundle-mb", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_keypair(work, private_name="k.key", public_name="k.pub")
        model = padded_identity_model(work / "m.onnx", args.bundle_mb, seed=0)
        bundle, digest = build_bundle(
            model, work / "m.bundle", name="pad", version="1", device_class=DEVICE_CLASS,
            private_key=load_private_key(work / "k.key"),
        )  # fmt: skip
        size = model.stat().st_size
        with LocalBroker(work / "broker", extra_config="max_queued_messages 10000") as broker:
            fleet = LocalFleet(work, broker.url, [work / "k.pub"])
            procs = []
            try:
                fleet.start_coordinator()
                ids = [f"sim-{i:04d}" for i in range(args.devices)]
                per = -(-len(ids) // args.processes)
                ctx = mp.get_context("spawn")
                for p in range(args.processes):
                    proc = ctx.Process(
                        target=_process, args=(ids[p * per : (p + 1) * per], broker.url, str(work), args.timeout)
                    )
                    proc.start()
                    procs.append(proc)
                wait_until(lambda: len(fleet.get("/api/v1/devices")) == args.devices, timeout=300, what="devices")
                fleet.upload(bundle)
                coordinator = psutil.Process(fleet.coordinator.pid)  # type: ignore[union-attr]
                coordinator.cpu_percent(None)
                cpu_start = sum(coordinator.cpu_times()[:2])
                started = time.perf_counter()
                fleet.deploy(digest)
                peak_rss = 0
                while True:
                    peak_rss = max(peak_rss, coordinator.memory_info().rss)
                    active = sum(1 for d in fleet.get("/api/v1/devices") if d.get("active_digest") == digest)
                    if active == args.devices or time.perf_counter() - started > args.timeout:
                        break
                    time.sleep(1)
                elapsed = time.perf_counter() - started
                cpu_s = sum(coordinator.cpu_times()[:2]) - cpu_start
                metrics = fleet.http.get("/metrics").text
                sent = sum(
                    float(v)
                    for v in re.findall(
                        r'edgefleet_coordinator_chunk_bytes_served_total\{kind="file"\} ([0-9.e+]+)', metrics
                    )
                )
            finally:
                for proc in procs:
                    proc.terminate()
                fleet.stop()
    print(f"devices {args.devices} in {args.processes} processes; bundle {size / 1e6:.1f} MB; broker {broker.kind}")
    print(f"deploy -> all active: {elapsed:.1f} s ({active}/{args.devices} active)")
    print(f"coordinator CPU {cpu_s:.1f} s ({100 * cpu_s / elapsed:.0f}% of one core), peak RSS {peak_rss / 1e6:.0f} MB")
    print(f"bytes sent / (bundle size x devices) = {sent / (size * args.devices):.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
