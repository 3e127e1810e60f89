"""Telemetry ingest: messages per second into the coordinator's SQLite vs a plain paho subscriber.

Run by hand: python bench/bench_ingest.py [--messages 60000] [--devices 200] [--publishers 2]
                                            [--publisher paho|mosquitto_pub] [--order together|apart]
                                            [--report agent|minimal]

Publishers send telemetry for many device ids as fast as the broker takes it (QoS 1, as agents do),
with 5% duplicate deliveries; a plain paho subscriber drains the same topics in the same run as the
baseline (``--order together``, both at once, sharing the CPUs; ``--order apart``: raw first, then the
coordinator, each draining its own burst with the machine to itself). Reported: raw drain rate, the
coordinator's insert rate, and that every unique message is stored exactly once.

Everything shares this machine's CPUs: with ``--publisher paho`` (default) the publishers are Python
processes that take about a core between them; with ``--publisher mosquitto_pub`` every device id
is its own C client (one connection per device, as in a fleet) reading its messages from a file,
which leaves the CPUs to the broker, the baseline and the coordinator.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.messages import Telemetry
from edgefleet.protocol.signing import generate_keypair
from edgefleet.protocol.topics import PREFIX, Channel, topic


def _report(device_id: str, i: int, kind: str) -> Telemetry:
    """``minimal``: counters only (the figures before 2026-11-24 were taken with these); ``agent``: what a
    serving agent's window carries: latency percentiles and histogram, errors by kind, device health, drift."""
    if kind == "minimal":
        return Telemetry(device_id=device_id, window_s=1.0, inference_count=i % 50, error_count=0)
    served = 40 + i % 50
    histogram = {b: n for b, n in zip(range(38, 50), (1, 3, 6, 9, 7, 5, 3, 2, 1, 1, 1, 1), strict=True)}
    histogram[38] += served - sum(histogram.values())
    return Telemetry(
        device_id=device_id, window_s=10.0, bundle_digest="ab" * 32, runtime="onnxruntime-cpu",
        inference_count=served, error_count=i % 3, errors_by_kind={"invalid_argument": i % 3} if i % 3 else {},
        latency_ms_mean=0.81, latency_ms_p50=0.74, latency_ms_p95=1.52, latency_ms_p99=2.31,
        latency_histogram=histogram, disk_free_bytes=12 << 30, disk_used_percent=41.5, cpu_percent=12.5,
        rss_bytes=118 << 20, soc_temp_c=51.2, device_cpu_percent=23.0, memory_used_percent=48.7,
        drift_score=0.04, confidence_drift_score=0.02, drift_features={"pixels[12]": 0.11}, outbox_pending=0,
    )  # fmt: skip


def _messages(devices: list[str], count: int, kind: str) -> list[tuple[str, bytes]]:
    """``count`` telemetry messages round-robin over ``devices``; every 20th repeats the one before it
    (a duplicate delivery, as after a lost PUBACK)."""
    messages: list[tuple[str, bytes]] = []
    for i in range(count):
        device_id = devices[i % len(devices)]
        if i % 20 == 19:
            messages.append(messages[-1])
        else:
            messages.append((topic(device_id, Channel.TELEMETRY), _report(device_id, i, kind).to_bytes()))
    return messages


def _publisher(port: int, devices: list[str], count: int, seed: int, ready: Any, kind: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{seed}-{os.getpid()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    messages = _messages(devices, count, kind)  # prepared first, so the publishers measure the broker, not pydantic
    ready.wait()
    for name, payload in messages:
        client.publish(name, payload, qos=1)
    time.sleep(1)
    client.loop_stop()
    client.disconnect()


class CPublishers:
    """One ``mosquitto_pub -l`` per device id, each sending its own lines (one JSON message each)."""

    def __init__(self, port: int, messages: list[tuple[str, bytes]], work: Path) -> None:
        by_topic: dict[str, list[bytes]] = {}
        for name, payload in messages:
            by_topic.setdefault(name, []).append(payload)
        self.port, self.files = port, []
        for i, (name, payloads) in enumerate(by_topic.items()):
            path = work / f"pub-{i}.jsonl"
            path.write_bytes(b"\n".join(payloads) + b"\n")
            self.files.append((name, path))
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for i, (name, path) in enumerate(self.files):
            with path.open("rb") as stdin:
                self.procs.append(subprocess.Popen(
                    ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-i", f"cpub-{i}", "-q", "1",
                     "-M", "100", "-t", name, "-l"],
                    stdin=stdin,
                ))  # fmt: skip

    def join(self) -> None:
        for proc in self.procs:
            if proc.wait(timeout=600) != 0:
                raise RuntimeError(f"mosquitto_pub exited with {proc.returncode}")


def _cpu_s(pid: int, name: str = "coordinator") -> dict[str, float]:
    """CPU seconds (user + system) of a process (``name``) and of each of its children, by command."""
    root = psutil.Process(pid)
    figures: dict[str, float] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            times, command = proc.cpu_times(), " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        label = name if proc is root else "telemetry receiver" if "ingest_receiver" in command else command
        figures[label] = figures.get(label, 0.0) + times.user + times.system
    return figures


class RawDrain:
    def __init__(self, port: int) -> None:
        self.count = 0
        self.first = self.last = 0.0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw-drain")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{PREFIX}/devices/+/telemetry", qos=1)
        self.client.loop_start()

    def _on_message(self, *_args: object) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.count += 1
        self.last = now


class Publishers:
    """One publishing burst of ``per`` messages from each of ``count`` publishers, paho or C."""

    def __init__(self, kind: str, port: int, devices: list[str], count: int, per: int, work: Path, report: str) -> None:
        self.kind, self.total = kind, per * count
        self.duplicates = self.total // 20 if kind == "mosquitto_pub" else (per // 20) * count
        if kind == "mosquitto_pub":
            self.cpub = CPublishers(port, _messages(devices, self.total, report), work)
            self.procs: list[Any] = []
            return
        ctx = mp.get_context("spawn")
        self.ready = ctx.Event()
        self.procs = [
            ctx.Process(target=_publisher, args=(port, devices, per, p, self.ready, report)) for p in range(count)
        ]
        for proc in self.procs:
            proc.start()
        time.sleep(3 + per / 20000)  # let the publishers prepare their payloads

    def go(self) -> float:
        """Start publishing; return when it started."""
        started = time.perf_counter()
        if self.kind == "mosquitto_pub":
            self.cpub.start()
        else:
            self.ready.set()
        return started

    def join(self) -> None:
        for proc in self.procs:
            proc.join()
        if self.kind == "mosquitto_pub":
            self.cpub.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=60000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--publishers", type=int, default=2, help="Python publisher processes (paho).")
    parser.add_argument("--publisher", choices=["paho", "mosquitto_pub"], default="paho")
    parser.add_argument(
        "--report", choices=["agent", "minimal"], default="agent",
        help="agent: every figure a serving agent's window carries (~0.9 KB); minimal: counters only (~0.7 KB).",
    )  # fmt: skip
    parser.add_argument(
        "--order", choices=["together", "apart"], default="together",
        help="together: the raw subscriber and the coordinator drain one burst at once, sharing the CPUs; "
        "apart: each drains its own burst with the machine to itself, raw first.",
    )  # fmt: skip
    args = parser.parse_args()
    per = args.messages // args.publishers
    devices = [f"ingest-{i:04d}" for i in range(args.devices)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "k.pub").write_bytes(generate_keypair()[1])
        db_path = work / "coordinator" / "data" / "fleet.db"

        def stored() -> int:
            with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as conn:
                return int(conn.execute("select count(*) from telemetry").fetchone()[0])

        with LocalBroker(
            work / "broker", extra_config="max_queued_messages 1000000\nmax_inflight_messages 1000"
        ) as broker:
            fleet = LocalFleet(work, broker.url, [work / "k.pub"])
            try:
                if args.order == "together":
                    fleet.start_coordinator()
                drain = RawDrain(broker.port)
                time.sleep(0.5)
                burst = Publishers(args.publisher, broker.port, devices, args.publishers, per, work, args.report)
                cpu_before = _cpu_s(fleet.coordinator.pid) if fleet.coordinator is not None else {}
                raw_cpu = psutil.Process().cpu_times()  # this process: the raw subscriber's thread
                started = burst.go()
                wait_until(lambda: drain.count >= burst.total, timeout=600, interval=0.02, what="raw drain")
                raw_rate = burst.total / (time.perf_counter() - started)
                raw_cpu_s = sum(psutil.Process().cpu_times()[:2]) - sum(raw_cpu[:2])
                burst.join()
                if args.order == "apart":
                    drain.client.disconnect()
                    drain.client.loop_stop()
                    fleet.start_coordinator()
                    burst = Publishers(args.publisher, broker.port, devices, args.publishers, per, work, args.report)
                    assert fleet.coordinator is not None
                    cpu_before = _cpu_s(fleet.coordinator.pid)
                    started = burst.go()
                unique = burst.total - burst.duplicates
                wait_until(lambda: stored() >= unique, timeout=600, interval=0.05, what="coordinator ingest")
                ingest_rate = burst.total / (time.perf_counter() - started)
                assert fleet.coordinator is not None
                cpu_after = _cpu_s(fleet.coordinator.pid)
                threading.Event().wait(1.0)
                final = stored()
                burst.join()
            finally:
                fleet.stop()
    print(f"{burst.total} messages ({unique} unique, 5% duplicate deliveries) from {args.devices} device ids, QoS 1, "
          f"published by {args.publisher}, {args.report} reports; {os.cpu_count()} CPUs; raw and coordinator "
          f"{args.order}")  # fmt: skip
    print(f"raw paho drain:       {raw_rate:8.0f} msg/s  (CPU per message: {raw_cpu_s / burst.total * 1e6:.0f} us)")
    print(
        f"coordinator ingest:   {ingest_rate:8.0f} msg/s  ({ingest_rate / raw_rate:.2f}x raw; target >= 0.7x, >= 10k)"
    )
    for name, seconds in cpu_after.items():
        print(f"  CPU per message, {name}: {(seconds - cpu_before.get(name, 0.0)) / burst.total * 1e6:.0f} us")
    print(f"stored rows: {final} (expected {unique}: {'exactly once' if final == unique else 'MISMATCH'})")


if __name__ == "__main__":
    main()
