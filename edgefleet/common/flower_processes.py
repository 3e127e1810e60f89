"""Flower's SuperLink and SuperNode as supervised child processes (loopback by default).

Both roles run one: the agent a SuperNode per campaign (edgefleet.agent.learning.participant), the
coordinator a SuperLink (edgefleet.coordinator.campaigns.engines); hence this lowest layer.

Written against flwr 1.40, where the SuperLink serves its Fleet, Control and Runtime APIs over HTTP on
one port (`--host`/`--port`) and a SuperNode serves its own Runtime API on another. Runs are
submitted by `edgefleet.federated.server.deployment`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Self

from edgefleet.common.errors import EdgefleetError

if TYPE_CHECKING:
    from flwr.supercore.control import ControlHttpClient

__all__ = [
    "LOOPBACK",
    "DeploymentError",
    "NodeConfigValue",
    "RunTimeoutError",
    "SuperLinkAddresses",
    "SuperLinkProcess",
    "SuperNodeProcess",
    "TlsFiles",
    "control_client",
    "flwr_script",
    "format_node_config",
    "free_port",
    "strip_ansi",
]

logger = logging.getLogger(__name__)

NodeConfigValue = str | bool | int | float
"""A value Flower accepts in a node_config or run_config (TOML scalars)."""

LOOPBACK = "127.0.0.1"
_LOG_TAIL_CHARS = 4000
_POLL_S = 0.5
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NODE_ID_LINE = re.compile(r"SuperNode ID: (\d+)")
_CONFIG_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
# Status strings of flwr.common.constant.Status / SubStatus in 1.40.
_FINISHED = "finished"
_COMPLETED = "completed"


class DeploymentError(EdgefleetError):
    """A Flower deployment component failed to start, stop or run; carries the tail of its log."""

    def __init__(self, component: str, reason: str, log_tail: str = "") -> None:
        message = f"{component}: {reason}"
        if log_tail:
            message += f"\n--- last lines of the {component} log ---\n{log_tail}"
        super().__init__(message)
        self.component = component
        self.reason = reason
        self.log_tail = log_tail


class RunTimeoutError(DeploymentError):
    """A run did not finish within its timeout; it was asked to stop."""

    def __init__(self, run_id: int, timeout_s: float, log_tail: str = "") -> None:
        self.run_id = run_id
        self.timeout_s = timeout_s
        super().__init__(f"run {run_id}", f"did not finish within {timeout_s:.0f} s; stop requested", log_tail)


def flwr_script(name: str) -> Path:
    """Path of a Flower console script installed next to this interpreter, so any venv works."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise DeploymentError(name, f"console script not found at {path}: is flwr installed in this environment?")
    return path


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on `host` right now (the OS picks it; it may be taken again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _toml_scalar(key: str, value: NodeConfigValue) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # Flower splits `--node-config` with a regex that knows no escapes: quote with whichever
        # quote the value lacks; a TOML literal string ('...') needs no escaping at all.
        if "\n" in value or "\r" in value:
            raise ValueError(f"node_config[{key!r}]: newlines are not allowed")
        if "'" not in value:
            return f"'{value}'"
        if '"' not in value and "\\" not in value:
            return f'"{value}"'
        raise ValueError(f"node_config[{key!r}]: a value may not hold both quote kinds (or ' and a backslash)")
    raise TypeError(f"node_config[{key!r}]: {type(value).__name__} is not str, bool, int or float")


def format_node_config(node_config: Mapping[str, NodeConfigValue]) -> str:
    """Render a dict as the `key='value' n=1` string `flower-supernode --node-config` parses."""
    parts = []
    for key, value in node_config.items():
        if not _CONFIG_KEY.match(key):
            raise ValueError(f"node_config key {key!r}: use letters, digits, '-', '_' (and '.' between parts)")
        parts.append(f"{key}={_toml_scalar(key, value)}")
    return " ".join(parts)


def _read_tail(path: Path, chars: int = _LOG_TAIL_CHARS) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - chars))
            return _ANSI.sub("", handle.read().decode("utf-8", errors="replace"))
    except FileNotFoundError:
        return ""


def _http_ok(url: str, ca_file: Path | None = None) -> bool:
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    try:
        with urllib.request.urlopen(url, timeout=1.0, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class _ChildProcess:
    """One Flower executable as a child in its own session, its output in a log file.

    Flower's SuperLink and SuperNode each start a `flower-superexec`, which starts `flwr-serverapp`
    / `flwr-clientapp` per run or message. These watch their parent and exit on their own within
    seconds; stop() signals the whole process group so that none outlives a test even when the
    parent had to be killed.

    stop() may be called from another thread while start() still waits for the child to come up (a
    service told to stop while a SuperNode registers): the wait ends at once with DeploymentError, and
    a start() that has not spawned yet spawns nothing.
    """

    component = "flower"

    def __init__(self, workdir: Path, stop_timeout_s: float) -> None:
        self.workdir = Path(workdir)
        self.stop_timeout_s = stop_timeout_s
        self.log_path = self.workdir / f"{self.component}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._stopping = threading.Event()
        self._spawn_lock = threading.Lock()  # a stop() from another thread sees the child or none will come
        self._stop_lock = threading.Lock()  # two stop()s (the starter's and the stopper's) run one after the other

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        return _read_tail(self.log_path, chars)

    def _spawn(self, argv: list[str]) -> None:
        if self._proc is not None:
            raise DeploymentError(self.component, "already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # FABs, per-run state and the CLI config land in the workdir, not in ~/.flwr.
        env["FLWR_HOME"] = str(self.workdir / "flwr-home")
        env["PYTHONUNBUFFERED"] = "1"
        with self._spawn_lock:
            if self._stopping.is_set():
                raise DeploymentError(self.component, "stopped before it started")
            self._log_file = self.log_path.open("ab")
            logger.info("starting %s: %s (log %s)", self.component, " ".join(argv), self.log_path)
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
            )

    def _fail_if_exited(self, doing: str) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            code = self._proc.returncode
            self.stop()  # its SuperExec may still be running
            raise DeploymentError(self.component, f"exited with code {code} while {doing}", self.log_tail())

    def _wait_until(self, ready: Callable[[], bool], doing: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self._stopping.is_set():
                raise DeploymentError(self.component, f"stopped while not yet {doing}", self.log_tail())
            self._fail_if_exited(doing)
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise DeploymentError(self.component, f"not {doing} after {timeout_s:.0f} s", tail)
            self._stopping.wait(_POLL_S)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout_s`; then clear out the child's process group.

        Safe from any thread, also while start() waits; the object cannot be started again afterwards.
        """
        self._stopping.set()
        with self._spawn_lock:  # a spawn under way has finished: its child is in _proc, or no child will come
            proc = self._proc
        if proc is None:
            return
        with self._stop_lock:
            self._stop_child(proc)

    def _stop_child(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            logger.info("stopping %s (pid %d)", self.component, proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "%s (pid %d) ignored SIGTERM for %.0f s; killing", self.component, proc.pid, self.stop_timeout_s
                )
                proc.kill()
                proc.wait(timeout=self.stop_timeout_s)
        self._kill_group(proc.pid)
        self._close_log()
        logger.info("%s stopped with code %s", self.component, proc.returncode)

    def _kill_group(self, pgid: int) -> None:
        # The child led its own session, so its pid is the group id of everything it started.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            logger.debug("sent %s to leftover processes of %s", sig.name, self.component)
            deadline = time.monotonic() + self.stop_timeout_s
            while time.monotonic() < deadline:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    return
                time.sleep(_POLL_S)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's certificate, its key and the CA that signed it (PEM files)."""

    certfile: Path
    keyfile: Path
    ca_file: Path


@dataclass(frozen=True)
class SuperLinkAddresses:
    """Where a SuperLink listens. In flwr 1.40 all three APIs share one HTTP port."""

    fleet: str
    control: str
    runtime: str


class SuperLinkProcess(_ChildProcess):
    """`flower-superlink --insecure` on a free loopback port, state in `workdir/state.db`.

    With `tls` it serves HTTPS instead; with `node_auth` too (`--enable-supernode-auth`) it admits only
    SuperNodes whose public key was registered first (`federated.deployment.register_node`).

    Example:
        with SuperLinkProcess(tmp_path / "superlink").start() as link:
            node = SuperNodeProcess(link.addresses.fleet, {"node-name": "a"}, tmp_path / "a").start()
    """

    component = "superlink"

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = LOOPBACK,
        port: int | None = None,
        tls: TlsFiles | None = None,
        node_auth: bool = False,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
        extra_args: Iterable[str] = (),
    ) -> None:
        super().__init__(workdir, stop_timeout_s)
        if node_auth and tls is None:
            raise DeploymentError(self.component, "SuperNode authentication needs TLS (Flower refuses it otherwise)")
        self.host = host
        self.tls = tls
        self.node_auth = node_auth
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args)
        self.database = self.workdir / "state.db"

    @property
    def addresses(self) -> SuperLinkAddresses:
        if self.port is None:
            raise DeploymentError(self.component, "not started: no address yet")
        address = f"{LOOPBACK if self.host in ('0.0.0.0', '::') else self.host}:{self.port}"
        return SuperLinkAddresses(fleet=address, control=address, runtime=address)

    def start(self) -> Self:
        """Start and wait until its HTTP health endpoint answers."""
        if self.port is None:
            self.port = free_port(self.host if self.host not in ("0.0.0.0", "::") else LOOPBACK)
        self._spawn(
            [
                str(flwr_script("flower-superlink")),
                *self._security_args(),
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--database",
                str(self.database),
                # Otherwise its SuperExec runs `uv sync` for every app: needs the network, changes the env.
                "--disable-runtime-dependency-installation",
                *self.extra_args,
            ]
        )
        scheme = "https" if self.tls else "http"
        health = f"{scheme}://{self.addresses.control}/health"
        ca_file = self.tls.ca_file if self.tls else None
        self._wait_until(lambda: _http_ok(health, ca_file), "serving /health", self.startup_timeout_s)
        logger.info("superlink ready on %s (pid %s)", self.addresses.control, self.pid)
        return self

    def _security_args(self) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        return ["--ssl-certfile", str(self.tls.certfile), "--ssl-keyfile", str(self.tls.keyfile),
                "--ssl-ca-certfile", str(self.tls.ca_file),
                *(["--enable-supernode-auth"] if self.node_auth else [])]  # fmt: skip

    @property
    def root_certificates(self) -> bytes | None:
        """The CA (PEM) a client verifies this SuperLink with; None when it runs without TLS."""
        return self.tls.ca_file.read_bytes() if self.tls else None

    def online_node_ids(self) -> set[int]:
        """Node ids the SuperLink currently lists as online (Control API ListNodes)."""
        from edgefleet.common.flower_compat import control_requests

        with control_client(self.addresses.control, self.root_certificates) as client:
            response = client.ListNodes(control_requests().ListNodesRequest())
        return {info.node_id for info in response.nodes_info if info.status == "online"}

    def wait_for_nodes(self, node_ids: Iterable[int], timeout_s: float = 30.0) -> None:
        """Wait until every given node is online at this SuperLink."""
        wanted = set(node_ids)
        self._wait_until(lambda: wanted <= self.online_node_ids(), f"listing nodes {sorted(wanted)} online", timeout_s)


class SuperNodeProcess(_ChildProcess):
    """`flower-supernode --insecure` connected to a SuperLink, with its own node_config.

    Its Runtime API (where its SuperExec fetches work for `flwr-clientapp`) gets a free loopback port;
    flwr 1.40 has no `--clientappio-api-address` any more. `auth_private_key` (an OpenSSH-format EC key,
    see `agent.node_key`) is for a SuperLink that authenticates nodes; it needs `root_certificates`.
    """

    component = "supernode"

    def __init__(
        self,
        superlink_fleet_address: str,
        node_config: Mapping[str, NodeConfigValue],
        workdir: Path,
        *,
        root_certificates: Path | None = None,
        auth_private_key: Path | None = None,
        port: int | None = None,
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
        extra_args: Iterable[str] = (),
    ) -> None:
        super().__init__(workdir, stop_timeout_s)
        if auth_private_key is not None and root_certificates is None:
            raise DeploymentError(self.component, "SuperNode authentication needs TLS (root_certificates)")
        self.superlink_fleet_address = superlink_fleet_address
        self.node_config = dict(node_config)
        self.root_certificates = root_certificates
        self.auth_private_key = auth_private_key
        self._node_config_arg = format_node_config(self.node_config)  # fail before spawning
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args)
        self.node_id: int | None = None

    def start(self) -> Self:
        """Start and wait until it has registered with the SuperLink (it then logs its node id)."""
        if self.port is None:
            self.port = free_port()
        self._spawn(
            [
                str(flwr_script("flower-supernode")),
                *(["--root-certificates", str(self.root_certificates)] if self.root_certificates else ["--insecure"]),
                "--superlink",
                self.superlink_fleet_address,
                "--node-config",
                self._node_config_arg,
                "--host",
                LOOPBACK,
                "--port",
                str(self.port),
                *(["--auth-supernode-private-key", str(self.auth_private_key)] if self.auth_private_key else []),
                *self.extra_args,
            ]
        )
        self._wait_until(self._registered, f"registered with {self.superlink_fleet_address}", self.startup_timeout_s)
        logger.info("supernode %s registered (pid %s, node_config %s)", self.node_id, self.pid, self.node_config)
        return self

    def _registered(self) -> bool:
        # Flower logs "SuperNode ID: <id>" once register and activate have succeeded; there is
        # no API on the node to ask. SuperLinkProcess.wait_for_nodes confirms it from the other side.
        match = _NODE_ID_LINE.search(self.log_tail(1 << 20))
        if match:
            self.node_id = int(match.group(1))
        return match is not None


def control_client(control_address: str, root_certificates: bytes | None = None) -> ControlHttpClient:
    from edgefleet.common.flower_compat import control_client as flower_control_client

    return flower_control_client(control_address, root_certificates)


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)
