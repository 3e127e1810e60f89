"""Start a local MQTT broker for the demo and the tests: Mosquitto when installed, else amqtt."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["LocalBroker", "free_port", "wait_for_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class LocalBroker:
    """A broker process on a free loopback port, with its own config in ``workdir``.

    ``extra_config`` lines are appended to Mosquitto's config (password_file, acl_file, ...).
    """

    def __init__(self, workdir: Path, *, prefer: str = "auto", extra_config: str = "") -> None:
        if prefer not in ("auto", "mosquitto", "amqtt"):
            raise ValueError(f"unknown broker {prefer!r}: use auto, mosquitto or amqtt")
        self.workdir = workdir
        self.port = free_port()
        self.extra_config = extra_config
        mosquitto = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if prefer == "mosquitto" and mosquitto is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.kind = "mosquitto" if mosquitto and prefer != "amqtt" else "amqtt"
        self._mosquitto = mosquitto
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> LocalBroker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"{self.kind}.log", "ab")  # noqa: SIM115 - the child process owns it
        if self.kind == "mosquitto":
            conf = self.workdir / "mosquitto.conf"
            lines = [
                f"listener {self.port} 127.0.0.1",
                "persistence false",
                "set_tcp_nodelay true",
                "log_dest stderr",
                "log_type error",
            ]
            if "password_file" not in self.extra_config:
                lines.append("allow_anonymous true")
            conf.write_text("\n".join(lines) + "\n" + self.extra_config + "\n")
            assert self._mosquitto is not None
            cmd = [self._mosquitto, "-c", str(conf)]
        else:
            cmd = [sys.executable, "-m", "edgefleet.local.amqtt_broker", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Start again on the same port (for outage tests)."""
        self.stop()
        self.start()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
