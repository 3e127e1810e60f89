"""An in-process Grid: the ServerApp's messages go straight to ClientApps in this process, in threads.

For tests and benchmarks without Ray or a SuperLink. Each node keeps its own Context (node_config
and state) across rounds like a SuperNode does; a ClientApp that raises answers with an error reply,
one that is slower than the round's timeout is simply not waited for, and ``disconnect`` takes a
node off the grid. It sets Flower's message ids and task identity the way its InMemoryGrid does
(private details of flwr 1.40, all in edgefleet.common.flower_compat).
"""

from __future__ import annotations

import copy
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from time import monotonic
from typing import TYPE_CHECKING

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp.grid import Grid

from edgefleet.common import flower_compat

if TYPE_CHECKING:
    from flwr.supercore.run import Run  # the type Grid.run has; the value comes from flower_compat
from edgefleet.federated.secure_aggregation import is_secure_message

__all__ = ["InProcessGrid", "InProcessNode"]

log = logging.getLogger(__name__)

ClientCallable = Callable[[Message, Context], Message]


@dataclass
class InProcessNode:
    app: ClientCallable  # a flwr ClientApp, or a callable wrapping one (fault injection in tests)
    node_config: dict[str, bool | float | int | str] = field(default_factory=dict)


class InProcessGrid(Grid):
    def __init__(self, nodes: list[InProcessNode], *, run_config: dict[str, bool | float | int | str] | None = None,
                 run_id: int = 1, max_workers: int | None = None) -> None:  # fmt: skip
        self._run_id = run_id
        self._contexts: dict[int, Context] = {}
        self._apps: dict[int, ClientCallable] = {}
        for i, node in enumerate(nodes):
            node_id = 1000 + i
            self._apps[node_id] = node.app
            self._contexts[node_id] = Context(
                run_id, node_id, dict(node.node_config), RecordDict(), dict(run_config or {})
            )
        self._online = set(self._apps)
        self._lock = threading.Lock()
        self._secure_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_workers or max(1, len(nodes)), thread_name_prefix="client")
        self._pending: dict[str, Future[Message]] = {}
        flower_compat.set_task_identity(run_id, flower_compat.superlink_node_id())

    # -- Grid -----------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run_id = run.run_id

    @property
    def run(self) -> Run:
        return flower_compat.empty_run(self._run_id)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # fmt: skip
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        with self._lock:
            return sorted(self._online)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            # A node gets its own copy, as it would after the wire: Flower's SecAgg+ workflow sends one
            # content object to every node, and its client mod pops keys from what it receives.
            message = copy.deepcopy(message)
            message_id = uuid.uuid4().hex
            flower_compat.set_message_id(message, message_id)
            node_id = message.metadata.dst_node_id
            with self._lock:
                online = node_id in self._online
            if not online:
                log.info("node %d is not connected; message %s is not delivered", node_id, message_id)
                continue
            self._pending[message_id] = self._pool.submit(self._deliver, node_id, message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = []
        for message_id in list(message_ids):
            future = self._pending.get(message_id)
            if future is not None and future.done():
                del self._pending[message_id]
                replies.append(future.result())
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        deadline = None if timeout is None else monotonic() + timeout
        waiting = {self._pending[i] for i in ids}
        while waiting:
            left = None if deadline is None else max(0.0, deadline - monotonic())
            if left == 0.0:
                break
            _, waiting = wait(waiting, timeout=left, return_when=FIRST_COMPLETED)
        replies = list(self.pull_messages(ids))
        for message_id in ids:
            if message_id in self._pending:  # too slow: its reply is dropped, as a SuperLink drops expired ones
                self._pending.pop(message_id).cancel()
        return replies

    # -- faults and lifecycle ---------------------------------------------------
    def disconnect(self, node_id: int) -> None:
        with self._lock:
            self._online.discard(node_id)

    def context(self, node_id: int) -> Context:
        return self._contexts[node_id]

    def close(self) -> None:
        """Stop taking messages and return at once: a ClientApp still running (hung, or past its round's
        timeout) finishes on its own thread, as a SuperNode would after the SuperLink gave up on it."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, node_id: int, message: Message) -> Message:
        try:
            if is_secure_message(message.content):
                # SecAgg+ messages decode legacy numpy bytes (np.load parses headers with ast); CPython
                # 3.11's AST constructor is not safe in threads at once ("recursion depth mismatch"),
                # so in this process they are handled one at a time, as separate SuperNodes never race.
                with self._secure_lock:
                    return self._apps[node_id](message, self._contexts[node_id])
            return self._apps[node_id](message, self._contexts[node_id])
        except Exception as exc:  # a ClientApp that raises answers with an error, as on a SuperNode
            log.warning("node %d: ClientApp raised %s: %s", node_id, type(exc).__name__, exc, exc_info=exc)
            error = Error(code=flower_compat.client_app_error_code(), reason=f"{type(exc).__name__}: {exc}")
            return Message(error=error, reply_to=message)
