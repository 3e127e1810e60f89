"""Staged rollouts: move devices' desired bundle wave by wave, gated by how the model behaves.

A rollout never pushes steps to devices; it only writes desired state (through ``deploy``) and
reads what devices report. A background ticker advances every running rollout:

  assign the wave -> wait until its online devices run the bundle (or fail, or time out)
  -> soak -> check gates (activation failures, error rate, p95 latency vs the previous bundle,
     devices reporting drift of inputs or output confidence on the new bundle)
  -> next wave, or halt and set every touched device's desired bundle back to what it ran before.

Waves are formed from the targeted devices that are online when the rollout starts (spec.py has
what a rollout and its gates may say; gates.py judges a wave on the evidence its devices sent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from edgefleet.coordinator.errors import Conflict, NotFound
from edgefleet.coordinator.rollouts.gates import evaluate_gates
from edgefleet.coordinator.rollouts.spec import DeviceState, RolloutSpec, parse_waves
from edgefleet.coordinator.store import FleetStore
from edgefleet.coordinator.targets import select_devices
from edgefleet.protocol.messages import FailureKind

__all__ = ["RolloutEngine"]

log = logging.getLogger(__name__)

# A device that refused the new bundle, or took it and went back: its activation failed.
_ACTIVATION_FAILED = (FailureKind.REFUSED, FailureKind.REVERTED)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _order(rollout_id: str, device_id: str) -> str:
    """A stable shuffle: canary waves take devices from every class, not the first ids."""
    return hashlib.sha256(f"{rollout_id}/{device_id}".encode()).hexdigest()


class RolloutEngine:
    def __init__(
        self,
        db: FleetStore,
        deploy: Callable[..., Any],  # (digest, device_ids, *, allow_downgrade=False), as Coordinator.deploy
        *,
        resolve_version: Callable[[str, str], str] = lambda _model, version: version,
        tick_s: float = 1.0,
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self.db = db
        self._is_leader = is_leader  # only the leading coordinator of several advances rollouts
        self._deploy = deploy
        self._resolve = resolve_version
        self.tick_s = tick_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            if not self._is_leader():
                continue
            try:
                self.tick()
            except Exception:  # one bad rollout must not stop the others for good
                log.exception("rollout tick failed")

    # -- operations ----------------------------------------------------------------------
    def create(self, spec: RolloutSpec) -> dict[str, Any]:
        """Plan the waves and assign the first; ``version`` may be a stage name (production, staging)."""
        spec = spec.model_copy(update={"version": self._resolve(spec.model, spec.version)})
        bundles = {
            b["device_class"]: b["digest"]
            for b in self.db.bundles()
            if b["name"] == spec.model and b["version"] == spec.version
        }
        if not bundles:
            raise NotFound(f"no bundle of {spec.model}:{spec.version} in the registry")
        targets = [d for d in select_devices(self.db, spec.target) if d.get("device_class") in bundles]
        if not targets:
            classes = sorted(bundles)
            raise Conflict(f"no device matches the target with a bundle of {spec.model}:{spec.version} ({classes})")
        eligible = [d for d in targets if d.get("availability") == "online"]
        absent = [d for d in targets if d.get("availability") != "online"]
        if not eligible:
            why = ", ".join(f"{d['device_id']} {d.get('availability') or 'never seen'}" for d in absent[:10])
            raise Conflict(f"no device of the target can take part now: none is online ({why})")
        rollout_id = uuid.uuid4().hex[:12]
        counts = parse_waves(spec.waves, len(eligible))
        eligible.sort(key=lambda d: _order(rollout_id, d["device_id"]))
        rows = [
            {
                "rollout_id": rollout_id, "device_id": d["device_id"], "wave": len(counts) - 1,
                "from_digest": d.get("active_digest"), "to_digest": bundles[d["device_class"]], "state": "skipped",
                "assigned_at": None,
                "detail": f"not online when the rollout was created ({d.get('availability') or 'never seen'})",
            }
            for d in absent
        ]  # fmt: skip
        for rank, device in enumerate(eligible):
            wave = next(i for i, count in enumerate(counts) if rank < count)
            rows.append(
                {
                    "rollout_id": rollout_id, "device_id": device["device_id"], "wave": wave,
                    "from_digest": device.get("active_digest"), "to_digest": bundles[device["device_class"]],
                    "state": "pending", "assigned_at": None, "detail": None,
                }
            )  # fmt: skip
        self.db.rollouts.create(
            {
                "id": rollout_id, "model": spec.model, "version": spec.version, "status": "running",
                "spec": spec.model_dump_json(), "wave": 0, "waves": json.dumps(counts),
                "wave_started_at": None, "soak_started_at": None, "reason": None,
                "created_at": _now(), "updated_at": _now(),
            },
            rows,
        )  # fmt: skip
        skipped = (
            f"; {len(absent)} skipped, not online: {', '.join(d['device_id'] for d in absent[:10])}" if absent else ""
        )
        self._event("created", rollout_id, None, f"{len(eligible)} devices in {len(counts)} waves {counts}{skipped}")
        if self._is_leader():  # else the leader's next tick assigns the first wave
            self.tick()
        return self.get(rollout_id)

    def get(self, rollout_id: str) -> dict[str, Any]:
        rollout = self.db.rollouts.get(rollout_id)
        if rollout is None:
            raise NotFound(f"no rollout {rollout_id}")
        devices = self.db.rollouts.members(rollout_id)
        counts: dict[str, int] = {}
        for device in devices:
            counts[device["state"]] = counts.get(device["state"], 0) + 1
        return {
            "id": rollout["id"], "model": rollout["model"], "version": rollout["version"],
            "status": rollout["status"], "wave": rollout["wave"], "waves": json.loads(rollout["waves"]),
            "reason": rollout["reason"], "created_at": rollout["created_at"], "updated_at": rollout["updated_at"],
            "devices": counts, "device_states": devices,
        }  # fmt: skip

    def overview(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in self.get(i).items() if k != "device_states"} for i in self.db.rollouts.ids()]

    def events(self, rollout_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return self.db.rollouts.events(rollout_id, limit)

    def pause(self, rollout_id: str) -> dict[str, Any]:
        return self._transition(rollout_id, {"running"}, "paused", "paused by operator")

    def resume(self, rollout_id: str) -> dict[str, Any]:
        return self._transition(rollout_id, {"paused"}, "running", "resumed by operator")

    def abort(self, rollout_id: str) -> dict[str, Any]:
        """Stop advancing; devices keep what they were given (use rollback to undo)."""
        return self._transition(rollout_id, {"running", "paused"}, "aborted", "aborted by operator")

    def rollback(self, rollout_id: str, reason: str = "rolled back by operator") -> dict[str, Any]:
        rollout = self.get(rollout_id)
        if rollout["status"] == "rolled_back":
            raise Conflict(f"rollout {rollout_id} is rolled back already")
        self._roll_back(rollout_id, reason, status="rolled_back")
        return self.get(rollout_id)

    def _transition(self, rollout_id: str, allowed: set[str], status: str, reason: str) -> dict[str, Any]:
        rollout = self.get(rollout_id)
        if rollout["status"] not in allowed:
            raise Conflict(f"rollout {rollout_id} is {rollout['status']}; cannot become {status}")
        self._update(rollout_id, status=status, reason=reason)
        self._event(status, rollout_id, None, reason)
        return self.get(rollout_id)

    # -- the ticker ----------------------------------------------------------------------
    def tick(self) -> None:
        for rollout_id in self.db.rollouts.ids(status="running"):
            self._advance(rollout_id)

    def _advance(self, rollout_id: str) -> None:
        rollout = self.db.rollouts.get(rollout_id)
        assert rollout is not None
        members = self.db.rollouts.members(rollout_id)
        spec = RolloutSpec.model_validate_json(rollout["spec"])
        wave, waves = rollout["wave"], json.loads(rollout["waves"])
        devices = {d["device_id"]: d for d in self.db.devices()}
        now = time.time()

        in_wave = [m for m in members if m["wave"] == wave]
        pending = [m["device_id"] for m in in_wave if m["state"] == "pending"]
        if pending:
            self._assign(rollout_id, pending, in_wave)
            self._update(rollout_id, wave_started_at=now, soak_started_at=None)
            return

        self._observe(rollout_id, members, devices)
        members = self.db.rollouts.members(rollout_id)
        touched = [m for m in members if m["state"] in ("assigned", "active", "failed")]
        failed = [m for m in touched if m["state"] == "failed"]
        if touched and len(failed) / len(touched) > spec.gates.max_failure_fraction:
            reasons = "; ".join(f"{m['device_id']}: {m['detail']}" for m in failed[:3])
            self._halt(rollout_id, f"{len(failed)} of {len(touched)} devices failed to activate ({reasons})")
            return

        in_wave = [m for m in members if m["wave"] == wave]
        waiting = [
            m for m in in_wave
            if m["state"] == "assigned" and (devices.get(m["device_id"]) or {}).get("availability") == "online"
        ]  # fmt: skip
        started = rollout["wave_started_at"] or now
        if waiting and now - started < spec.wave_timeout_s:
            return
        for member in waiting:  # online but not done in time (e.g. an app holds the update lock)
            self._set_state(rollout_id, member["device_id"], "skipped", "did not activate within the wave timeout")

        if rollout["soak_started_at"] is None:
            self._update(rollout_id, soak_started_at=now)
            self._event("wave_active", rollout_id, None, f"wave {wave + 1}/{len(waves)} active; soaking {spec.soak_s}s")
            return
        if now - rollout["soak_started_at"] < spec.soak_s:
            return
        verdict, measured = evaluate_gates(self.db, members, spec.gates, since=started)
        label = f"wave {wave + 1}/{len(waves)}"
        if verdict == "failed":
            self._halt(rollout_id, measured)
            return
        if verdict == "not_evaluated":
            waited = now - rollout["soak_started_at"] - spec.soak_s
            if waited < spec.gates.evidence_wait_s:
                return
            if spec.gates.without_evidence == "halt":
                self._halt(rollout_id, f"{label}: gates not evaluated after {waited:.0f} s: {measured}")
                return
            self._event("wave_not_evaluated", rollout_id, None, f"{label} gates not evaluated: {measured}; "
                        "continuing (without_evidence = continue)")  # fmt: skip
        else:
            self._event("wave_passed", rollout_id, None, f"{label} passed its gates: {measured}")
        if wave + 1 < len(waves):
            self._update(rollout_id, wave=wave + 1, wave_started_at=None, soak_started_at=None)
        else:
            self._finish(rollout_id)

    def _assign(self, rollout_id: str, device_ids: list[str], in_wave: list[dict[str, Any]]) -> None:
        by_digest: dict[str, list[str]] = {}
        for member in in_wave:
            if member["device_id"] in device_ids:
                by_digest.setdefault(member["to_digest"], []).append(member["device_id"])
        for digest, ids in by_digest.items():
            self._deploy(digest, ids)
        for device_id in device_ids:
            self.db.rollouts.update_member(rollout_id, device_id, {"state": "assigned", "assigned_at": time.time()})
        self._event("wave_assigned", rollout_id, None, f"{len(device_ids)} devices: {', '.join(sorted(device_ids))}")

    def _observe(self, rollout_id: str, members: list[dict[str, Any]], devices: dict[str, dict[str, Any]]) -> None:
        for member in members:
            if member["state"] != "assigned":
                continue
            device = devices.get(member["device_id"]) or {}
            reported = device.get("reported") or {}
            error = reported.get("last_error") or {}
            if device.get("active_digest") == member["to_digest"]:
                self._set_state(rollout_id, member["device_id"], "active", None)
            elif error.get("bundle_digest") == member["to_digest"] and error.get("kind") in _ACTIVATION_FAILED:
                self._set_state(rollout_id, member["device_id"], "failed", error.get("reason"))

    def _finish(self, rollout_id: str) -> None:
        """``completed`` only when every device the rollout targeted runs the bundle; otherwise
        ``completed_with_skips``, naming each device left out and why."""
        members = self.db.rollouts.members(rollout_id)
        left_out = [m for m in members if m["state"] != "active"]
        unevaluated = [e for e in self.db.rollouts.events(rollout_id, 1000) if e["kind"] == "wave_not_evaluated"]
        gates = (
            f"gates not evaluated in {len(unevaluated)} wave(s), no evidence to judge"
            if unevaluated
            else "every wave passed its gates"
        )
        if not left_out:
            status, reason = "completed", gates
        else:
            listed = "; ".join(f"{m['device_id']}: {_why_not(m)}" for m in left_out[:20])
            status = "completed_with_skips"
            reason = (
                f"{len(members) - len(left_out)} of {len(members)} devices run the bundle; {gates}; left out: {listed}"
            )
        self._update(rollout_id, status=status, reason=reason)
        self._event(status, rollout_id, None, reason)

    def _halt(self, rollout_id: str, reason: str) -> None:
        log.warning("rollout %s halted: %s", rollout_id, reason)
        self._roll_back(rollout_id, reason, status="halted")

    def _roll_back(self, rollout_id: str, reason: str, *, status: str) -> None:
        """Every device the rollout touched gets the bundle it ran before as its desired state."""
        members = self.db.rollouts.members(rollout_id)
        by_digest: dict[str, list[str]] = {}
        for member in members:
            assigned = member["assigned_at"] is not None  # a device skipped before assignment kept its bundle
            if member["state"] in ("assigned", "active", "failed", "skipped") and assigned and member["from_digest"]:
                by_digest.setdefault(member["from_digest"], []).append(member["device_id"])
        for digest, ids in by_digest.items():
            # Back to what the device ran before, even below a min_version the new bundle declares: the
            # rollback is the coordinator's explicit, signed decision.
            self._deploy(digest, ids, allow_downgrade=True)
            for device_id in ids:
                self._set_state(rollout_id, device_id, "rolled_back", reason)
        self._update(rollout_id, status=status, reason=reason)
        self._event(status, rollout_id, None, reason)

    # -- rows ----------------------------------------------------------------------------
    def _set_state(self, rollout_id: str, device_id: str, state: DeviceState, detail: str | None) -> None:
        self.db.rollouts.update_member(rollout_id, device_id, {"state": state, "detail": detail})
        self._event(f"device_{state}", rollout_id, device_id, detail or "")

    def _update(self, rollout_id: str, **fields: Any) -> None:
        self.db.rollouts.update(rollout_id, fields | {"updated_at": _now()})

    def _event(self, kind: str, rollout_id: str | None, device_id: str | None, detail: str) -> None:
        self.db.rollouts.add_event(
            {"at": _now(), "kind": kind, "rollout_id": rollout_id, "device_id": device_id, "detail": detail}
        )


def _why_not(member: dict[str, Any]) -> str:
    if member["state"] == "assigned":
        return "assigned, not running it yet (offline since?)"
    return f"{member['state']} ({member['detail'] or 'no reason given'})"
