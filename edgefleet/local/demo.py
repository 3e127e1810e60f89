"""`edgefleet demo`: the whole system on one machine, end to end, in well under a minute.

Broker -> keys -> a real model (MLP on scikit-learn's digits) -> ONNX -> signed bundle ->
coordinator and agents as separate processes -> rollout -> real digits through each agent's
gRPC API -> a table of what each device served -> clean shutdown.
"""

from __future__ import annotations

import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from rich.console import Console
from rich.table import Table

from edgefleet.agent.serving.client import InferenceClient
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.signing import load_private_key, write_keypair

__all__ = ["run_demo"]

console = Console()
DEVICE_CLASS = "x86-gateway"


def _step(started: float, text: str) -> None:
    console.print(f"[dim]{time.monotonic() - started:5.1f}s[/dim] {text}")


def run_demo(agents: int = 3, keep: bool = False, broker: str = "auto") -> int:
    import torch

    from edgefleet.compression.builder import build_bundle
    from edgefleet.compression.export import export_onnx
    from edgefleet.local.digits import load_digits_data, train_digits_mlp

    started = time.monotonic()
    # SIGTERM (timeout, systemd, a CI runner) must clean up like Ctrl-C: without this Python dies at once and
    # the broker, coordinator and agents it started live on with PPID 1.
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    workdir = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    local_broker = LocalBroker(workdir / "broker", prefer=broker)
    fleet: LocalFleet | None = None
    failed = False
    try:
        local_broker.start()
        _step(started, f"broker: {local_broker.kind} on {local_broker.url}")

        keys = workdir / "keys"
        write_keypair(keys)
        # The command key signs commands, desired states and campaign assignments; agents trust its public half.
        write_keypair(keys, private_name="command.key", public_name="command.pub")

        data = load_digits_data()
        model, accuracy = train_digits_mlp(data)
        onnx_path = export_onnx(
            model,
            torch.from_numpy(data.x_test[:1]),
            workdir / "digits.onnx",
            input_name="pixels",
            output_name="logits",
        )
        bundle, digest = build_bundle(
            onnx_path,
            workdir / "digits-1.0.0.bundle",
            name="digits",
            version="1.0.0",
            device_class=DEVICE_CLASS,
            private_key=load_private_key(keys / "signing.key"),
            test_inputs=[{"pixels": data.x_test[:8]}],
        )
        _step(
            started,
            f"trained MLP on digits (held-out accuracy {accuracy:.3f}), exported ONNX, signed bundle {digest[:12]}",
        )

        fleet = LocalFleet(workdir, local_broker.url, [keys / "signing.pub"], command_key=keys / "command.key")
        url = fleet.start_coordinator()
        _step(started, f"coordinator: REST API on {url}; desired state signed with the command key")
        device_ids = [f"gateway-{i + 1:02d}" for i in range(agents)]
        for device_id in device_ids:
            fleet.add_agent(device_id, DEVICE_CLASS)
            fleet.start_agent(device_id)
        wait_until(
            lambda: len(fleet.get("/api/v1/devices")) >= agents,
            timeout=30,
            what="agents to report to the coordinator",
        )
        _step(started, f"{agents} agents running, each with its own data dir and local gRPC socket")

        fleet.upload(bundle)
        fleet.deploy(digest)
        fleet.wait_active(digest, device_ids, timeout=40)
        _step(started, "rollout done: every agent fetched, verified, self-tested and activated the bundle")

        table = Table(title="edgefleet demo: digits MLP on every device")
        for column in ("device", "model", "version", "accuracy", "p50 latency (ms)", "runtime"):
            table.add_column(column)
        for device_id in device_ids:
            with InferenceClient(fleet.agents[device_id].target) as client:
                result = client.predict({"pixels": data.x_test})
                device_accuracy = float((result.outputs["logits"].argmax(axis=1) == data.y_test).mean())
                latencies = []
                for row in data.x_test[:100]:
                    t0 = time.perf_counter()
                    client.predict({"pixels": row[None, :]})
                    latencies.append((time.perf_counter() - t0) * 1000)
                info = client.model_info()
            table.add_row(
                device_id,
                result.model_name,
                result.model_version,
                f"{device_accuracy:.3f}",
                f"{statistics.median(latencies):.2f}",
                info.runtime,
            )
        console.print(table)
        _step(started, "shutting down")
        return 0
    except (RuntimeError, TimeoutError, OSError, httpx.HTTPError, grpc.RpcError) as exc:
        failed = True
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    finally:
        if fleet is not None:
            fleet.stop()
        local_broker.stop()
        if keep or failed:
            console.print(f"working folder kept (logs of every process): {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        console.print(f"[dim]{time.monotonic() - started:5.1f}s[/dim] done")
        signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_demo's cleanup
