"""Federated campaigns: create, pick the devices, run the rounds on an engine, register the result.

A campaign starts from a registry version's FP32 ONNX weights, trains on the devices that are
online, healthy and hold enough labelled samples, records every round (participants, declines,
metrics, privacy spent) as it goes, and ends with a new model version in stage ``staging``.
Engines run the rounds: in this process (tests, benchmarks) or on Flower's deployment engine
(a SuperLink here and a SuperNode on every device, see ``coordinator.campaign_engines``).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from flwr.app import ArrayRecord

from edgefleet.coordinator.campaigns.result import (
    BaseVersion,
    divergence,
    initial_arrays,
    load_base,
    privacy_report,
    register_result,
)
from edgefleet.coordinator.campaigns.store import FINAL_STATES, CampaignStore
from edgefleet.coordinator.errors import Conflict, Rejected
from edgefleet.coordinator.registry.artifacts import Registry
from edgefleet.coordinator.registry.models import ModelRegistry
from edgefleet.coordinator.store import FleetStore
from edgefleet.coordinator.targets import TargetSelector, select_devices
from edgefleet.federated.errors import FederatedError
from edgefleet.federated.models import check_architecture
from edgefleet.federated.server.evaluation import load_validation, validation_evaluator
from edgefleet.federated.server.rounds import CampaignOutcome, EvaluateFn, RoundRecord
from edgefleet.federated.spec import CampaignSpec
from edgefleet.protocol.signing import load_private_key

__all__ = ["CampaignEngine", "CampaignManager", "CampaignRun", "TargetSelector"]

log = logging.getLogger(__name__)


class CampaignRun:
    """What an engine needs to run one campaign's rounds.

    ``node_keys``: each device's reported SuperNode public key (PEM), for an engine that authenticates nodes.
    """

    def __init__(self, campaign_id: str, spec: CampaignSpec, devices: list[str], initial: ArrayRecord,
                 evaluate_fn: EvaluateFn | None, observer: _Observer,
                 node_keys: dict[str, str] | None = None) -> None:  # fmt: skip
        self.campaign_id, self.spec, self.devices = campaign_id, spec, devices
        self.initial, self.evaluate_fn, self.observer = initial, evaluate_fn, observer
        self.node_keys = node_keys or {}


class CampaignEngine(Protocol):
    """Runs a campaign's rounds. An engine with a true ``node_auth`` attribute admits only devices that
    reported a SuperNode public key (``ReportedState.supernode_public_key``); the others are skipped."""

    def run(self, run: CampaignRun) -> CampaignOutcome: ...


class _Observer:
    def __init__(self, store: CampaignStore, campaign_id: str, stop: threading.Event) -> None:
        self.store, self.campaign_id, self.stop = store, campaign_id, stop

    def round_finished(self, record: RoundRecord) -> None:
        self.store.record_round(self.campaign_id, record.as_dict())

    def should_abort(self) -> bool:
        return self.stop.is_set() or self.store.abort_requested(self.campaign_id)


class CampaignManager:
    def __init__(self, db: FleetStore, models: ModelRegistry, registry: Registry, *, signing_key: Path | None,
                 engine: CampaignEngine | None, architectures: Collection[str] = ()) -> None:  # fmt: skip
        self.store = CampaignStore(db)
        self.architectures = frozenset(architectures)  # import paths [campaigns] architectures allows
        self.db, self.models, self.registry = db, models, registry
        self.signing_key, self.engine = signing_key, engine
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()
        for row in self.store.recent(limit=10_000):
            if row["status"] == "running":  # its rounds ran in a process that is gone
                self.store.update(row["id"], status="failed", reason="the coordinator stopped during the campaign")

    # -- lifecycle ---------------------------------------------------------------------
    def create(self, spec: CampaignSpec, target: TargetSelector | None = None) -> dict[str, Any]:
        """Check the spec against the registry (the base weights must load into the architecture)."""
        try:
            check_architecture(spec.architecture, self.architectures)  # before anything is imported or built
            base = load_base(spec, self.models, self.registry)
            initial_arrays(spec, base, allowed=self.architectures)
        except FederatedError as exc:
            raise Rejected(f"campaign spec does not fit {spec.model}: {exc.reason}") from None
        if spec.validation_data is not None:
            try:
                load_validation(spec)
            except FederatedError as exc:
                raise Rejected(exc.reason) from None
        campaign_id = f"c{secrets.token_hex(4)}"
        return self.store.create(
            {"id": campaign_id, "model": spec.model, "base_version": base.version, "spec": spec.model_dump(),
             "target": (target or TargetSelector()).model_dump(), "round": 0, "abort_requested": 0}
        )  # fmt: skip

    def start(self, campaign_id: str) -> dict[str, Any]:
        row = self.store.get(campaign_id)
        if row["status"] != "created":
            raise Conflict(f"campaign {campaign_id} is {row['status']}; only a created campaign starts")
        if self.engine is None:
            raise Conflict("this coordinator has no campaign engine configured ([campaigns] in its config)")
        if self.signing_key is None:
            raise Conflict("campaigns need [campaigns] signing_key to sign the model they produce")
        spec = CampaignSpec.model_validate(row["spec"])
        devices, skipped = self.eligible(spec, TargetSelector.model_validate(row["target"]))
        if len(devices) < spec.min_clients:
            detail = "; ".join(f"{d}: {why}" for d, why in list(skipped.items())[:10]) or "no devices match the target"
            raise Conflict(f"{len(devices)} eligible devices, the campaign needs {spec.min_clients} ({detail})")
        base = load_base(spec, self.models, self.registry)
        run = CampaignRun(campaign_id, spec, devices, initial_arrays(spec, base, allowed=self.architectures),
                          validation_evaluator(spec, allowed=self.architectures),
                          _Observer(self.store, campaign_id, self._stop),
                          node_keys=self._node_keys(devices))  # fmt: skip
        row = self.store.update(campaign_id, status="running", devices=devices, started_at=_now())
        if skipped:
            log.info("campaign %s: starts with %s; skipped %s", campaign_id, devices,
                     "; ".join(f"{d}: {why}" for d, why in skipped.items()))  # fmt: skip
        thread = threading.Thread(target=self._run, args=(run, base), name=f"campaign-{campaign_id}", daemon=True)
        self._threads[campaign_id] = thread
        thread.start()
        return row | {"skipped": skipped}

    def abort(self, campaign_id: str) -> dict[str, Any]:
        row = self.store.get(campaign_id)
        if row["status"] in FINAL_STATES:
            raise Conflict(f"campaign {campaign_id} already ended ({row['status']})")
        if row["status"] == "created":
            return self.store.update(
                campaign_id, status="aborted", reason="aborted before it started", finished_at=_now()
            )
        self.store.request_abort(campaign_id)
        return self.store.get(campaign_id)

    def status(self, campaign_id: str) -> dict[str, Any]:
        row = self.store.get(campaign_id)
        spec = row["spec"]
        return row | {"rounds_total": spec["rounds"], "history": self.store.rounds(campaign_id)}

    def recent(self) -> list[dict[str, Any]]:
        return self.store.recent()

    def wait(self, campaign_id: str, timeout: float | None = None) -> dict[str, Any]:
        thread = self._threads.get(campaign_id)
        if thread is not None:
            thread.join(timeout)
        return self.status(campaign_id)

    def stop(self) -> None:
        """End running campaigns after their current round (a deployment run reads the abort from the DB)."""
        self._stop.set()
        for campaign_id, thread in self._threads.items():
            if thread.is_alive():
                self.store.request_abort(campaign_id)
        for thread in self._threads.values():
            thread.join(timeout=30)

    # -- selection -----------------------------------------------------------------------
    def eligible(self, spec: CampaignSpec, target: TargetSelector) -> tuple[list[str], dict[str, str]]:
        """Devices that may train now, and why each other device of the target may not."""
        chosen: list[str] = []
        skipped: dict[str, str] = {}
        for device in select_devices(self.db, target):
            device_id = device["device_id"]
            reported = device.get("reported") or {}
            samples = reported.get("training_samples") or 0
            if device.get("availability") != "online":
                skipped[device_id] = f"not online ({device.get('availability') or 'never seen'})"
            elif device.get("status") != "ready":
                skipped[device_id] = f"not healthy (status {device.get('status')})"
            elif samples < spec.min_samples:
                skipped[device_id] = f"{samples} labelled samples, the campaign needs {spec.min_samples}"
            elif self._node_auth and not reported.get("supernode_public_key"):
                skipped[device_id] = (
                    "reported no SuperNode public key (federated campaigns off, or an agent too old for node "
                    "authentication), and the campaign's SuperLink admits only registered SuperNodes"
                )
            else:
                chosen.append(device_id)
        return chosen, skipped

    @property
    def _node_auth(self) -> bool:
        return bool(getattr(self.engine, "node_auth", False))

    def _node_keys(self, device_ids: list[str]) -> dict[str, str]:
        """The SuperNode public keys the chosen devices last reported (from the stored ReportedState)."""
        if not self._node_auth:
            return {}
        wanted = set(device_ids)
        return {
            device["device_id"]: key
            for device in self.db.devices()
            if device["device_id"] in wanted and (key := (device.get("reported") or {}).get("supernode_public_key"))
        }

    # -- the campaign thread ---------------------------------------------------------------
    def _run(self, run: CampaignRun, base: BaseVersion) -> None:
        campaign_id, spec = run.campaign_id, run.spec
        try:
            assert self.engine is not None and self.signing_key is not None
            outcome = self.engine.run(run)
            fields: dict[str, Any] = {"status": outcome.status, "reason": outcome.reason,
                                      "privacy": privacy_report(spec, outcome).model_dump()}  # fmt: skip
            useful = any(r.status == "ok" for r in outcome.rounds)
            diverged = divergence(outcome, base) if useful else None
            if diverged:
                log.warning("campaign %s: %s; nothing registered", campaign_id, diverged)
                fields |= {"status": "failed", "reason": diverged}
            elif outcome.status in ("completed", "budget_exhausted") and useful:
                key = load_private_key(self.signing_key)
                version, digests = register_result(
                    campaign_id, spec, outcome, base, registry=self.registry, models=self.models, key=key,
                    allowed=self.architectures,
                )  # fmt: skip
                fields |= {"result_version": version, "result_digests": ",".join(digests)}
            elif outcome.status in ("completed", "budget_exhausted"):
                fields |= {"status": "failed", "reason": outcome.reason or "no round completed"}
        except Exception as exc:  # the campaign ends with a reason; the coordinator goes on
            log.exception("campaign %s failed", campaign_id)
            reason = (
                exc.reason if isinstance(exc, FederatedError | Conflict | Rejected) else f"{type(exc).__name__}: {exc}"
            )
            fields = {"status": "failed", "reason": reason}
        self.store.update(campaign_id, **fields, finished_at=_now())
        log.info("campaign %s ended: %s %s", campaign_id, fields["status"], fields.get("reason", ""))


def _now() -> str:
    return datetime.now(UTC).isoformat()
