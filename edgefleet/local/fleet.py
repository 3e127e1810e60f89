"""A whole fleet on one machine, as separate processes: used by the demo, the tests and bench/.

The caller brings a broker URL and signing keys; this writes each process's config into its own
folder, starts ``edgefleet coordinator serve`` and ``edgefleet agent run`` processes, and stops
them all (SIGTERM, then SIGKILL) on ``stop``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.local.broker import free_port, wait_for_port

__all__ = ["AgentProcess", "LocalFleet", "wait_until"]

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_toml(path: Path, tables: dict[str, Any]) -> Path:
    lines = [f"{k} = {_toml(v)}" for k, v in tables.items() if not isinstance(v, dict)]
    for name, table in tables.items():
        if isinstance(table, dict):
            lines.append(f"\n[{name}]")
            lines += [f"{k} = {_toml(v)}" for k, v in table.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class AgentProcess:
    device_id: str
    config: Path
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"unix://{self.data_dir / 'agent.sock'}"


class LocalFleet:
    def __init__(
        self,
        workdir: Path,
        broker_url: str,
        trusted_keys: list[Path],
        *,
        token: str = "demo-token-0123456789",
        command_key: Path | None = None,
    ) -> None:
        """``command_key``: the coordinator signs commands, desired states and campaign assignments with this
        private key, and every agent gets its public key (``command_key`` with the suffix .pub) in command_keys."""
        self.workdir = workdir
        self.broker_url = broker_url
        self.trusted_keys = trusted_keys
        self.token = token
        self.command_key = command_key
        self.api_port = 0
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, AgentProcess] = {}
        self._http: httpx.Client | None = None

    # -- processes -----------------------------------------------------------------------
    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / log_name, "ab")  # noqa: SIM115 - handed to the child
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgefleet", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        return proc

    def start_coordinator(self, trusted_keys: list[Path] | None = None, **settings: Any) -> str:
        """Start ``edgefleet coordinator serve``; ``settings`` are extra config tables (e.g. campaigns=...)."""
        folder = self.workdir / "coordinator"
        folder.mkdir(parents=True, exist_ok=True)
        self.api_port = self.api_port or free_port()
        config = write_toml(
            folder / "coordinator.toml",
            {
                "data_dir": str(folder / "data"),
                "trusted_keys": [str(p) for p in (trusted_keys or self.trusted_keys)],
                "broker": {"url": self.broker_url},
                "api": {"host": "127.0.0.1", "port": self.api_port, "token": self.token},
            }
            | ({"command_key": str(self.command_key)} if self.command_key else {})
            | settings,
        )
        self.coordinator = self._spawn(["coordinator", "serve", "--config", str(config)], "coordinator.log")
        wait_for_port(self.api_port, timeout=30, proc=self.coordinator)
        wait_until(lambda: self.get("/healthz")["broker_connected"], timeout=15, what="coordinator on the broker")
        return f"http://127.0.0.1:{self.api_port}"

    def add_agent(self, device_id: str, device_class: str = "x86-gateway", **settings: Any) -> AgentProcess:
        folder = self.workdir / device_id
        folder.mkdir(parents=True, exist_ok=True)
        tables: dict[str, Any] = {
            "device_id": device_id,
            "device_class": device_class,
            "data_dir": str(folder / "data"),
            "trusted_keys": [str(p) for p in self.trusted_keys],
            "telemetry_interval_s": settings.pop("telemetry_interval_s", 2.0),
            "broker": {"url": self.broker_url},
            "fetch": {"chunk_timeout_s": 3.0, "retry_backoff_s": 1.0},
        }
        if self.command_key is not None:
            tables["command_keys"] = [str(self.command_key.with_suffix(".pub"))]
        tables.update(settings)
        agent = AgentProcess(device_id, write_toml(folder / "agent.toml", tables), folder / "data")
        self.agents[device_id] = agent
        return agent

    def start_agent(self, device_id: str) -> AgentProcess:
        agent = self.agents[device_id]
        socket = agent.data_dir / "agent.sock"
        socket.unlink(missing_ok=True)  # left by a killed run
        agent.proc = self._spawn(["agent", "run", "--config", str(agent.config)], f"{device_id}.log")
        wait_until(lambda: _api_up(agent) or agent.proc.poll() is not None, timeout=30, what=f"{device_id} API")  # type: ignore[union-attr]
        if agent.proc.poll() is not None:
            raise RuntimeError(
                f"agent {device_id} exited with {agent.proc.returncode}; see {self.workdir / (device_id + '.log')}"
            )
        return agent

    def start_agents(self, device_ids: list[str], timeout: float = 120.0) -> None:
        """Start several agents at once (much faster than one by one on few cores)."""
        for device_id in device_ids:
            agent = self.agents[device_id]
            (agent.data_dir / "agent.sock").unlink(missing_ok=True)
            agent.proc = self._spawn(["agent", "run", "--config", str(agent.config)], f"{device_id}.log")

        def all_up() -> bool:
            for device_id in device_ids:
                agent = self.agents[device_id]
                if agent.proc is not None and agent.proc.poll() is not None:
                    raise RuntimeError(f"agent {device_id} exited with {agent.proc.returncode}")
            return all(_api_up(self.agents[d]) for d in device_ids)

        wait_until(all_up, timeout=timeout, interval=0.2, what=f"{len(device_ids)} agents to serve")

    def stop_agent(self, device_id: str, sig: int = signal.SIGTERM) -> int | None:
        agent = self.agents[device_id]
        code = _stop(agent.proc, sig)
        agent.proc = None
        return code

    def stop(self) -> None:
        # Every agent is told at once and then waited for: each takes a second or two to say "stopped".
        running = [a for a in self.agents.values() if a.proc is not None and a.proc.poll() is None]
        for agent in running:
            agent.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        for agent in running:
            _wait_or_kill(agent.proc)  # type: ignore[arg-type]
        for agent in self.agents.values():
            agent.proc = None
        _stop(self.coordinator, signal.SIGTERM)
        self.coordinator = None
        if self._http is not None:
            self._http.close()
            self._http = None

    # -- REST ----------------------------------------------------------------------------
    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                base_url=f"http://127.0.0.1:{self.api_port}",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=30,
            )
        return self._http

    def get(self, path: str) -> Any:
        response = self.http.get(path)
        response.raise_for_status()
        return response.json()

    def upload(self, bundle: Path) -> str:
        response = self.http.post("/api/v1/bundles", content=bundle.read_bytes())
        response.raise_for_status()
        return str(response.json()["digest"])

    def deploy(self, digest: str, device_ids: list[str] | None = None) -> list[dict[str, Any]]:
        response = self.http.post("/api/v1/deployments", json={"bundle_digest": digest, "device_ids": device_ids})
        response.raise_for_status()
        return list(response.json())

    def device(self, device_id: str) -> dict[str, Any] | None:
        response = self.http.get(f"/api/v1/devices/{device_id}")
        return None if response.status_code == 404 else dict(response.json())

    def wait_registered(self, device_ids: list[str], timeout: float = 60.0) -> None:
        """Until the coordinator knows each device's class: its reported state arrived (its availability
        alone, which may come first, makes a device row without a class, and a deploy by class skips it)."""

        def all_known() -> bool:
            devices = {d["device_id"]: d for d in self.get("/api/v1/devices")}
            return all(devices.get(i, {}).get("device_class") for i in device_ids)

        wait_until(all_known, timeout=timeout, interval=0.2, what=f"{device_ids} to register")

    def wait_active(self, digest: str, device_ids: list[str], timeout: float = 60.0) -> None:
        def all_active() -> bool:
            devices = {d["device_id"]: d for d in self.get("/api/v1/devices")}
            return all(devices.get(i, {}).get("active_digest") == digest for i in device_ids)

        wait_until(all_active, timeout=timeout, interval=0.2, what=f"{device_ids} to run {digest[:12]}")


def _api_up(agent: AgentProcess) -> bool:
    """The agent answers on its local API. (The socket file alone is not enough: gRPC binds it while
    the agent is still constructing, before it has restored its model.)"""
    if not (agent.data_dir / "agent.sock").exists():
        return False
    channel = grpc.insecure_channel(agent.target)
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
    except grpc.RpcError:
        return False
    finally:
        channel.close()
    return True


def _stop(proc: subprocess.Popen[bytes] | None, sig: int) -> int | None:
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(sig)
    return _wait_or_kill(proc)


def _wait_or_kill(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
