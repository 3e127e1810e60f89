"""Submitting a Flower App run to a SuperLink and waiting for its end; registering SuperNode keys.

`flwr run` is not used: the `flwr` CLI fails at start-up with typer 0.15.4 (amqtt pins it; flwr
declares typer>=0.13 but its `--format` option is a `Literal`, which that typer cannot build). Runs
are submitted through the Control API client the CLI itself uses
(`flwr.supercore.control.ControlHttpClient`). That client, the FAB builder and the protobuf messages
are not a documented public API, so tests/test_flower_deployment.py exercises every call made here
against a real SuperLink.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.common import flower_compat
from edgefleet.common.flower_processes import (
    _CONFIG_KEY,
    _LOG_TAIL_CHARS,
    _POLL_S,
    DeploymentError,
    NodeConfigValue,
    RunTimeoutError,
    control_client,
    strip_ansi,
)

__all__ = ["RunResult", "register_node", "submit_run"]

logger = logging.getLogger(__name__)

# Status strings of flwr.common.constant.Status / SubStatus in 1.40.
_FINISHED = "finished"
_COMPLETED = "completed"


@dataclass(frozen=True)
class RunResult:
    """How a run ended: status 'finished' with sub_status 'completed', 'failed' or 'stopped'.

    `log` is what the SuperLink kept for the run: the ServerApp's output, tracebacks included.
    ClientApp output stays in each SuperNode's log file.
    """

    run_id: int
    status: str
    sub_status: str
    details: str
    log: str
    elapsed_s: float
    run_config: dict[str, NodeConfigValue] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.status == _FINISHED and self.sub_status == _COMPLETED


def _check_run_config(run_config: Mapping[str, NodeConfigValue]) -> dict[str, NodeConfigValue]:
    for key, value in run_config.items():
        if not _CONFIG_KEY.match(key):
            raise ValueError(f"run_config key {key!r}: use letters, digits, '-', '_' (and '.' between parts)")
        if not isinstance(value, str | bool | int | float):
            raise TypeError(f"run_config[{key!r}]: {type(value).__name__} is not str, bool, int or float")
    return dict(run_config)


def _build_fab(app_dir: Path) -> tuple[str, bytes, str]:
    """("publisher/name==version", FAB bytes, FAB sha256) for an app directory, built as `flwr run` does."""
    pyproject = app_dir / "pyproject.toml"
    try:
        config, fab_bytes, errors, warnings = flower_compat.build_fab(app_dir)
    except (OSError, ValueError) as err:  # tomllib's errors are ValueErrors
        raise DeploymentError("flower app", f"cannot read {pyproject}: {err}") from err
    if errors:
        raise DeploymentError("flower app", f"{pyproject} is not a valid Flower App: {'; '.join(errors)}")
    for warning in warnings:
        logger.warning("flower app %s: %s", pyproject, warning)
    return flower_compat.fab_identity(config), fab_bytes, hashlib.sha256(fab_bytes).hexdigest()


def submit_run(
    app_dir: Path,
    superlink_control_address: str,
    run_config: Mapping[str, NodeConfigValue] | None = None,
    timeout_s: float = 300.0,
    root_certificates: bytes | None = None,
    on_poll: Callable[[], None] | None = None,
) -> RunResult:
    """Build the app's FAB, start a run with run_config overrides, wait for it to finish.

    ``on_poll`` is called at every look at the run's status while it goes on (the coordinator
    relays the rounds the ServerApp has finished).

    Returns the final status and the run's log (ServerApp output) whatever the outcome; raises
    RunTimeoutError (after asking the SuperLink to stop the run) when it does not finish in time,
    DeploymentError when the SuperLink refuses the run or cannot be reached.
    """
    requests = flower_compat.control_requests()
    ListRunsRequest, StartRunRequest = requests.ListRunsRequest, requests.StartRunRequest
    StopRunRequest, StreamLogsRequest = requests.StopRunRequest, requests.StreamLogsRequest
    app_dir = Path(app_dir).resolve()
    overrides = _check_run_config(run_config or {})
    fab_name, fab_bytes, fab_hash = _build_fab(app_dir)
    component = f"superlink {superlink_control_address}"

    def fetch_log(run_id: int) -> str:
        # For a finished run the stream returns what was logged and ends.
        chunks = [res.log_output for res in client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=0.0))]
        return strip_ansi("".join(chunks))

    started = time.monotonic()
    with _control_errors(component), control_client(superlink_control_address, root_certificates) as client:
        response = client.StartRun(
            StartRunRequest(
                fab=flower_compat.fab_proto(fab_hash, fab_bytes),
                override_config=flower_compat.user_config_proto(overrides),
                federation="",
            )
        )
        if not response.HasField("run_id"):
            note = response.note if response.HasField("note") else "no reason given"
            raise DeploymentError(component, f"refused to start a run of {fab_name}: {note}")
        run_id = int(response.run_id)
        logger.info("run %d of %s started (overrides %s)", run_id, fab_name, overrides)

        deadline = started + timeout_s
        while True:
            run = client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict[run_id]
            if run.status.status == _FINISHED:
                break
            if on_poll is not None:
                on_poll()
            if time.monotonic() > deadline:
                client.StopRun(StopRunRequest(run_id=run_id))
                raise RunTimeoutError(run_id, timeout_s, fetch_log(run_id)[-_LOG_TAIL_CHARS:])
            time.sleep(_POLL_S)
        result = RunResult(
            run_id=run_id,
            status=run.status.status,
            sub_status=run.status.sub_status,
            details=run.status.details,
            log=fetch_log(run_id),
            elapsed_s=time.monotonic() - started,
            run_config=overrides,
        )
    log_fn = logger.info if result.succeeded else logger.warning
    log_fn("run %d %s:%s after %.1f s %s", run_id, result.status, result.sub_status, result.elapsed_s, result.details)
    return result


def register_node(
    superlink_control_address: str, public_key_pem: bytes, root_certificates: bytes, name: str | None = None
) -> int:
    """Register a SuperNode's public key (PEM SubjectPublicKeyInfo, NIST EC curve) with a SuperLink that
    runs with `--enable-supernode-auth`, as `flwr supernode register` does; returns the node id.

    Raises DeploymentError when the SuperLink refuses it (an invalid key, a key already registered)
    or cannot be reached.
    """
    RegisterNodeRequest = flower_compat.control_requests().RegisterNodeRequest
    with (
        _control_errors(f"superlink {superlink_control_address}"),
        control_client(superlink_control_address, root_certificates) as client,
    ):
        response = client.RegisterNode(RegisterNodeRequest(public_key=public_key_pem, name=name))
    if not response.node_id:
        raise DeploymentError(f"superlink {superlink_control_address}", "RegisterNode returned no node id")
    return int(response.node_id)


@contextmanager
def _control_errors(component: str) -> Iterator[None]:
    """Turn the Control API client's failures into DeploymentError with what the SuperLink answered."""
    import httpx

    try:
        yield
    except httpx.HTTPStatusError as err:
        detail = err.response.text[:_LOG_TAIL_CHARS]
        raise DeploymentError(
            component, f"Control API {err.request.url.path} answered {err.response.status_code}: {detail}"
        ) from err
    except (httpx.HTTPError, ValueError) as err:  # transport failure, or a payload that is not protobuf
        raise DeploymentError(component, f"Control API call failed: {type(err).__name__}: {err}") from err
