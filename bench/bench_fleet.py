"""A simulated fleet on one Mosquitto and one coordinator: registration, a 4-wave rollout, telemetry held.

Run by hand: python bench/bench_fleet.py [--devices 10000] [--telemetry-interval 60] [--store-url postgresql://...]

`edgefleet simulate` runs the devices in one process (one MQTT connection each). Side by side with the
coordinator, a raw paho subscriber takes the same telemetry stream off the broker: the baseline of
what arrived, against which the coordinator's stored reports are counted (a ratio of 1.00 is no
backlog). Prints the machine's CPU, the time until every device is registered, the rollout's time to
converge with each wave's gate verdict, the coordinator's CPU (its process and its telemetry receiver)
and memory, and the broker's memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil

from edgefleet.compression.builder import build_bundle
from edgefleet.local.broker import LocalBroker
from edgefleet.local.digits import load_digits_data, train_digits_mlp
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.signing import load_private_key, write_keypair
from edgefleet.protocol.topics import Channel, channel_subscription


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} x{psutil.cpu_count()}"
    return "unknown CPU"


class RawCounter:
    """The baseline: a plain paho subscriber counting the telemetry the broker delivers."""

    def __init__(self, port: int) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw-counter")
        self.client.on_connect = lambda c, *_: c.subscribe(channel_subscription(Channel.TELEMETRY), qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, *_: Any) -> None:
        with self._lock:
            self.count += 1

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Usage:
    """CPU seconds and peak RSS of a process and its children, sampled every second."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._cpu0 = self._cpu()
        self._t0 = time.monotonic()
        threading.Thread(target=self._sample, daemon=True).start()

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.proc, *self.proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _cpu(self) -> float:
        total = 0.0
        for p in self._tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            rss = 0
            for p in self._tree():
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss += p.memory_info().rss
            self.peak_rss = max(self.peak_rss, rss)

    def cores(self) -> float:
        """Mean cores used since the start."""
        return (self._cpu() - self._cpu0) / max(1e-9, time.monotonic() - self._t0)

    def stop(self) -> None:
        self._stop.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--telemetry-interval", type=float, default=60.0)
    parser.add_argument("--hold", type=float, default=120.0, help="Seconds of telemetry held after the rollout.")
    parser.add_argument("--waves", default="1%,10%,50%,100%")
    parser.add_argument("--store-url", default=None, help="A PostgreSQL URL for the coordinator's store.")
    args = parser.parse_args()
    print(f"machine: {cpu_model()}; {args.devices} simulated devices, telemetry every {args.telemetry_interval:g} s")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_keypair(work, private_name="k.key", public_name="k.pub")
        data = load_digits_data()
        model, _ = train_digits_mlp(data, hidden=32, epochs=2, seed=0)
        import torch

        from edgefleet.compression.export import export_onnx

        onnx_path = export_onnx(model, torch.from_numpy(data.x_test[:1]), work / "m.onnx", input_name="pixels",
                                output_name="logits")  # fmt: skip
        key = load_private_key(work / "k.key")
        bundle, _ = build_bundle(onnx_path, work / "m.bundle", name="digits", version="1.0.0",
                                 device_class="x86-gateway", private_key=key)  # fmt: skip
        with LocalBroker(work / "broker", prefer="mosquitto", extra_config="max_connections -1") as broker:
            fleet = LocalFleet(work, broker.url, [work / "k.pub"])
            settings = {"store": {"url": args.store_url}} if args.store_url else {}
            url = fleet.start_coordinator(**settings)
            assert fleet.coordinator is not None and broker.proc is not None
            coordinator, broker_usage = Usage(fleet.coordinator.pid), Usage(broker.proc.pid)
            raw = RawCounter(broker.port)
            duration = args.devices / 500 + 180 + args.hold
            started = time.monotonic()
            sim = subprocess.Popen(
                [sys.executable, "-m", "edgefleet", "simulate", "--devices", str(args.devices), "--broker", broker.url,
                 "--coordinator", url, "--token", fleet.token, "--duration", str(duration),
                 "--telemetry-interval", str(args.telemetry_interval), "--format", "json"],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            try:
                wait_until(lambda: sum(1 for d in fleet.get("/api/v1/devices") if d.get("device_class"))
                           >= args.devices, timeout=duration, interval=2, what="every device registered")  # fmt: skip
                registered = time.monotonic() - started
                fleet.upload(bundle)
                t0 = time.monotonic()
                created = fleet.http.post("/api/v1/rollouts", json={
                    "model": "digits", "version": "1.0.0", "waves": args.waves.split(","), "soak_s": 5,
                    "wave_timeout_s": 300, "gates": {"evidence_wait_s": 2 * args.telemetry_interval},
                })  # fmt: skip
                created.raise_for_status()
                rollout_id = created.json()["id"]
                done = wait_until(lambda: (r := fleet.get(f"/api/v1/rollouts/{rollout_id}"))["status"] != "running"
                                  and r, timeout=3600, interval=2, what="the rollout")  # fmt: skip
                converge = time.monotonic() - t0
                events = fleet.get(f"/api/v1/events?rollout_id={rollout_id}&limit=1000")
                verdicts = [e["kind"].removeprefix("wave_") for e in reversed(events)
                            if e["kind"] in ("wave_passed", "wave_not_evaluated")]  # fmt: skip
                hold_from = time.monotonic()
                raw_at_hold, stored_at_hold = raw.count, _stored(fleet)
                time.sleep(args.hold)
                held_s = time.monotonic() - hold_from
                raw_rate = (raw.count - raw_at_hold) / held_s
                stored_rate = (_stored(fleet) - stored_at_hold) / held_s
                with contextlib.suppress(TimeoutError):  # what did not drain is reported, not raised
                    wait_until(lambda: _stored(fleet) >= raw.count * 0.999, timeout=60, interval=1, what="drained")
                stored_total, raw_total = _stored(fleet), raw.count
                refused = {name: _metric(fleet, name) for name in ("dropped", "duplicates")}
            finally:
                sim.terminate()
                out, _ = sim.communicate(timeout=60)
                raw.stop()
                coordinator.stop()
                broker_usage.stop()
                cores, rss = coordinator.cores(), coordinator.peak_rss
                broker_rss = broker_usage.peak_rss
                fleet.stop()
    print(f"store: {'PostgreSQL' if args.store_url else 'SQLite'}; broker: Mosquitto")
    print(f"all {args.devices} registered after {registered:.1f} s")
    print(f"rollout {args.waves} -> {done['status']} in {converge:.1f} s; waves: {', '.join(verdicts)}")
    print(
        f"telemetry held {held_s:.0f} s: coordinator stored {stored_rate:.1f}/s, raw subscriber got {raw_rate:.1f}/s "
        f"(ratio {stored_rate / max(raw_rate, 1e-9):.2f}); in all stored {stored_total} of {raw_total} delivered "
        f"(dropped {refused['dropped']}, duplicates {refused['duplicates']})"
    )
    print(
        f"coordinator: {cores:.2f} cores on average, peak RSS {rss / 2**20:.0f} MiB; broker peak RSS "
        f"{broker_rss / 2**20:.0f} MiB"
    )
    if out:
        print("simulator:", json.dumps(json.loads(out)))


def _stored(fleet: LocalFleet) -> int:
    return _metric(fleet, "reports_stored")


def _metric(fleet: LocalFleet, name: str) -> int:
    """The sum of edgefleet_telemetry_NAME over its labels, from the coordinator's /metrics."""
    total = 0.0
    for line in fleet.http.get("/metrics").text.splitlines():
        metric = line.split("{", 1)[0].split(" ", 1)[0]
        if metric in (f"edgefleet_telemetry_{name}", f"edgefleet_telemetry_{name}_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


if __name__ == "__main__":
    main()
