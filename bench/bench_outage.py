"""A broker outage with agents producing telemetry throughout, one agent restarted in the middle of it:
every telemetry message produced must reach the coordinator exactly once.

A message counts as produced when any observer independent of the coordinator saw it:
  * during the outage nothing can leave, so every telemetry message the agents make sits in their
    outbox (agent/mqtt/outbox.py, table ``messages``); the bench reads the outboxes read-only and notes each id;
  * a subscriber on the broker (the "tap") notes every telemetry id published, and how often: a QoS 1
    resend passes twice, and the coordinator must drop the second copy by message id.
Lost: produced but not in the coordinator's store. As a check for losses nobody saw, each agent's
stored reports must form a chain of windows (a window closes as the next opens, ``sent_at`` is when it
closed); only the restarted agent's first window may start late. "rollups ok": each stored report was
folded into the minute rollups exactly once.

Run by hand:  python bench/bench_outage.py [--agents 3] [--outage-s 60] [--interval 0.5] [--kill] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import signal
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgefleet.common.mqtt import BrokerConfig, make_client
from edgefleet.local.broker import LocalBroker
from edgefleet.local.fleet import LocalFleet, wait_until
from edgefleet.protocol.errors import InvalidMessage
from edgefleet.protocol.messages import Telemetry, parse
from edgefleet.protocol.signing import write_keypair
from edgefleet.protocol.topics import Channel, coordinator_subscriptions, parse_topic


class WireTap:
    """Every telemetry message published on the broker: how often each id passed (a QoS 1 resend shows
    up twice), and whose it is and when it was closed."""

    def __init__(self, url: str) -> None:
        self.config = BrokerConfig(url=url)
        self.client = make_client(self.config, f"bench-tap-{time.monotonic_ns()}", clean_session=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)  # back before the agents' 1-3 s first retry
        self.seen: Counter[str] = Counter()
        self.about: dict[str, tuple[str, float]] = {}  # message id: device id, sent_at (epoch s)
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:  # a clean session: subscribe again after every reconnect
            client.subscribe([(t, 1) for t in coordinator_subscriptions()])

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if parse_topic(msg.topic).channel is not Channel.TELEMETRY:
                return
            message = parse(Telemetry, msg.payload)
        except InvalidMessage:
            return
        with self._lock:
            self.seen[message.message_id] += 1
            self.about[message.message_id] = (message.device_id, message.sent_at.timestamp())

    def start(self) -> None:
        self.client.connect_async(self.config.host, self.config.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def read_outbox(path: Path) -> tuple[list[str], int]:
    """The telemetry ids pending in an agent's outbox and the count of messages it dropped, read-only."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return [], 0
    try:
        ids = [
            r[0] for r in conn.execute("select message_id from messages where channel = ?", [Channel.TELEMETRY.value])
        ]
        dropped = conn.execute("select coalesce(sum(count), 0) from dropped").fetchone()[0]
    except sqlite3.OperationalError:  # being created by a starting agent
        return [], 0
    finally:
        conn.close()
    return ids, int(dropped)


def read_store(db_path: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The stored reports and, from the same snapshot, how many each device's minute rollups count
    (one read transaction: ingest goes on while the bench reads)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("begin")
        rows = [
            dict(r)
            for r in conn.execute("select message_id, device_id, sent_at, window_s from telemetry order by sent_at")
        ]
        folded = {r[0]: r[1] for r in conn.execute("select device_id, sum(reports) from telemetry_minute group by 1")}
        conn.execute("commit")
        return rows, folded
    finally:
        conn.close()


def window_gaps(rows: list[dict[str, Any]], interval_s: float, restart: tuple[float, float] | None) -> int:
    """About how many reports are missing between the stored ones of one agent, from windows that do not
    reach back to the report before them.

    ``restart`` (stopped, started; epoch s): the window open at the stop was never closed, and the new
    process's first window begins when it started, not where the last one ended.
    """
    if not rows:
        return 0
    width = statistics.median(r["window_s"] for r in rows) or interval_s  # a window is a little over the interval
    missing = 0
    for before, after in itertools.pairwise(rows):
        prev_end = datetime.fromisoformat(before["sent_at"]).timestamp()
        start = datetime.fromisoformat(after["sent_at"]).timestamp() - after["window_s"]
        if abs(start - prev_end) <= max(0.25, width / 2):
            continue
        if restart is not None and prev_end <= restart[0] <= start:
            gap = max(0.0, restart[0] - prev_end - width) + max(0.0, start - restart[1] - width)
        else:
            gap = start - prev_end
        missing += round(gap / width)
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=3, help="Agent processes.")
    parser.add_argument("--outage-s", type=float, default=60.0, help="Seconds the broker stays away.")
    parser.add_argument("--interval", type=float, default=0.5, help="Telemetry interval of every agent, seconds.")
    parser.add_argument("--kill", action="store_true", help="SIGKILL the restarted agent instead of SIGTERM.")
    parser.add_argument("--quick", action="store_true", help="A 10 s outage.")
    parser.add_argument("--drain-timeout", type=float, default=180.0, help="Most seconds to wait for delivery.")
    args = parser.parse_args()
    outage_s = 10.0 if args.quick else args.outage_s
    work = Path(tempfile.mkdtemp(prefix="edgefleet-outage-"))
    print(f"working folder (logs of every process): {work}")
    write_keypair(work, private_name="k.key", public_name="k.pub")
    device_ids = [f"out-{i}" for i in range(1, args.agents + 1)]
    victim = device_ids[0]
    sig = signal.SIGKILL if args.kill else signal.SIGTERM
    in_outbox: dict[str, set[str]] = {d: set() for d in device_ids}  # telemetry queued during the outage
    evicted: dict[str, int] = {}

    with LocalBroker(work / "broker") as broker:
        fleet = LocalFleet(work, broker.url, [work / "k.pub"])
        tap = WireTap(broker.url)
        db_path = work / "coordinator" / "data" / "fleet.db"
        try:
            fleet.start_coordinator()
            tap.start()
            for device_id in device_ids:
                fleet.add_agent(device_id, telemetry_interval_s=args.interval)
            fleet.start_agents(device_ids)
            wait_until(
                lambda: {r["device_id"] for r in read_store(db_path)[0]} >= set(device_ids),
                timeout=60,
                what="telemetry from every agent",
            )
            time.sleep(2.0)

            def queued() -> dict[str, list[str]]:
                return {d: read_outbox(fleet.agents[d].data_dir / "outbox.db")[0] for d in device_ids}

            broker.stop()
            went = time.time()
            print(f"broker down for {outage_s:.0f} s; {len(device_ids)} agents, telemetry every {args.interval} s")
            restart: tuple[float, float] | None = None
            while time.time() - went < outage_s:
                for device_id, ids in queued().items():
                    in_outbox[device_id].update(ids)
                if restart is None and time.time() - went >= outage_s / 2:
                    stopped = time.time()
                    code = fleet.stop_agent(victim, sig)
                    fleet.start_agent(victim)
                    restart = (stopped, time.time())
                    print(f"{victim} stopped with {sig.name} (exit {code}) and started again during the outage")
                time.sleep(0.2)
            for device_id, ids in queued().items():
                in_outbox[device_id].update(ids)
            broker.start()
            back = time.monotonic()

            outage_ids = set().union(*in_outbox.values())
            sent_s = stored_s = None  # out of every outbox (acknowledged by the broker); in the coordinator's store
            while time.monotonic() - back < args.drain_timeout and stored_s is None:
                if sent_s is None and not outage_ids & {i for ids in queued().values() for i in ids}:
                    sent_s = time.monotonic() - back
                if outage_ids <= {r["message_id"] for r in read_store(db_path)[0]}:
                    stored_s = time.monotonic() - back
                elif sent_s is not None and time.monotonic() - back > sent_s + 30:
                    break  # the agents are done; what has not arrived 30 s later will not
                time.sleep(0.2)
            time.sleep(3 * args.interval + 2.0)  # normal delivery again, and past the cutoff below
            cutoff = time.time() - 2.0  # reports closed before it have had time to arrive
            time.sleep(2.0)
            for device_id in device_ids:
                evicted[device_id] = read_outbox(fleet.agents[device_id].data_dir / "outbox.db")[1]
            rows, rollup_reports = read_store(db_path)
        finally:
            fleet.stop()
            tap.stop()

    stored = {r["message_id"]: r for r in rows}
    print()
    print(
        f"{'agent':8} {'produced':>8} {'queued':>6} {'delivered':>9} {'dups':>4} {'lost':>4} {'of queued':>9}"
        f" {'unseen':>6} {'evicted':>7} {'rollups':>7}"
    )
    totals: Counter[str] = Counter()
    for device_id in device_ids:
        mine = [r for r in rows if r["device_id"] == device_id]
        closed = {r["message_id"] for r in mine if datetime.fromisoformat(r["sent_at"]).timestamp() <= cutoff}
        on_wire = {i for i, (d, sent) in tap.about.items() if d == device_id and sent <= cutoff}
        produced = (
            closed | on_wire | in_outbox[device_id]
        )  # every id known to have left the agent's outbox or sat in it
        lost = produced - set(stored)
        # Windows missing from the chain of stored reports: a check for losses no observer saw.
        chain = sorted((stored[i] for i in closed), key=lambda r: r["sent_at"])
        unseen = max(0, window_gaps(chain, args.interval, restart if device_id == victim else None) - len(lost))
        figures = {
            "produced": len(produced),
            "queued": len(in_outbox[device_id]),
            "delivered": len(produced & set(stored)),
            "dups": sum(tap.seen[i] - 1 for i in produced if tap.seen[i] > 1),
            "lost": len(lost),
            "lost_queued": len(lost & in_outbox[device_id]),
            "unseen": unseen,
            "evicted": evicted[device_id],
        }
        totals.update(figures)
        folded = "ok" if rollup_reports.get(device_id, 0) == len(mine) else "WRONG"  # each stored report once
        f = figures
        print(
            f"{device_id:8} {f['produced']:>8} {f['queued']:>6} {f['delivered']:>9} {f['dups']:>4} {f['lost']:>4}"
            f" {f['lost_queued']:>9} {f['unseen']:>6} {f['evicted']:>7} {folded:>7}"
        )
    t = totals
    print(
        f"{'total':8} {t['produced']:>8} {t['queued']:>6} {t['delivered']:>9} {t['dups']:>4} {t['lost']:>4}"
        f" {t['lost_queued']:>9} {t['unseen']:>6} {t['evicted']:>7}"
    )
    print()
    print(f"outage {outage_s:.0f} s, {victim} restarted by {sig.name} during it; after the broker came back:")
    print(f"  outboxes emptied of the {len(outage_ids)} queued messages in " + _secs(sent_s))
    print("  all of them stored by the coordinator in " + _secs(stored_s))
    print(f"  duplicate deliveries on the wire, dropped by message id at the coordinator: {t['dups']}")
    exactly_once = t["lost"] == 0 and t["unseen"] == 0 and t["evicted"] == 0
    print(f"exactly once: {'yes' if exactly_once else 'NO'}  (reports closed before the cutoff; logs in {work})")


def _secs(value: float | None) -> str:
    return "never (within the wait)" if value is None else f"{value:.1f} s"


if __name__ == "__main__":
    main()
