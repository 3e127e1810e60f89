"""The fleet store's interface: what the coordinator keeps, and the only way any of it reads or writes it.

``FleetStore`` holds the fleet (bundles, devices, desired state, commands) and its telemetry, and
repositories for the rest: registry stages, rollouts, campaigns, API tokens, enrollment, and what operators
said of alerts (acknowledgments and silences). Rows go
in and out as plain dicts whose keys are the column names (JSON columns already decoded where a
method says so). The SQLite backend (``SQLiteStore``) is the default; a second backend implements
these classes and passes the same contract tests (tests/test_store_contract.py).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any

from edgefleet.coordinator.telemetry.rollups import Resolution
from edgefleet.coordinator.telemetry.rows import PreparedReport
from edgefleet.protocol.messages import Availability, Command, CommandResult, ReportedState, Telemetry

__all__ = [
    "AlertStateRepository",
    "CampaignRepository",
    "EnrollmentRepository",
    "FleetStore",
    "HealthReads",
    "RolloutRepository",
    "StageRepository",
    "TokenRepository",
]

Row = dict[str, Any]


class StageRepository(ABC):
    """Which stage each model version is in, and the history of every move."""

    @abstractmethod
    def stages(self, model: str) -> dict[str, str]:
        """Version -> stage, for the versions of ``model`` that were ever staged."""

    @abstractmethod
    def move(self, model: str, version: str, stage: str, *, at: str) -> None:
        """Put ``version`` in ``stage`` (recorded in the history); into production, whatever held it is archived."""

    @abstractmethod
    def history(self, model: str) -> list[Row]:
        """Every move of the model's versions, oldest first."""

    @abstractmethod
    def earlier_production(self, model: str, current: str) -> list[str]:
        """Versions other than ``current`` that were production, most recent first."""


class RolloutRepository(ABC):
    """Rollouts, their devices (one row per rollout and device) and the event log."""

    @abstractmethod
    def create(self, rollout: Row, members: list[Row]) -> None: ...

    @abstractmethod
    def get(self, rollout_id: str) -> Row | None: ...

    @abstractmethod
    def ids(self, *, status: str | None = None) -> list[str]:
        """Rollout ids, newest first; only those in ``status`` if given."""

    @abstractmethod
    def update(self, rollout_id: str, fields: Row) -> None: ...

    @abstractmethod
    def members(self, rollout_id: str) -> list[Row]:
        """The rollout's devices, by wave."""

    @abstractmethod
    def update_member(self, rollout_id: str, device_id: str, fields: Row) -> None: ...

    @abstractmethod
    def add_event(self, event: Row) -> None: ...

    @abstractmethod
    def events(self, rollout_id: str | None, limit: int) -> list[Row]:
        """The newest ``limit`` events (of one rollout, or of all), newest first."""

    @abstractmethod
    def count_by_status(self) -> dict[str, int]: ...


class CampaignRepository(ABC):
    """Campaigns and their rounds; JSON columns (spec, target, devices, privacy, evaluation) decoded."""

    @abstractmethod
    def create(self, row: Row) -> None: ...

    @abstractmethod
    def get(self, campaign_id: str) -> Row | None: ...

    @abstractmethod
    def recent(self, limit: int) -> list[Row]:
        """Newest first."""

    @abstractmethod
    def update(self, campaign_id: str, fields: Row) -> None: ...

    @abstractmethod
    def put_round(self, campaign_id: str, record: Row, *, at: str) -> None:
        """Store (or replace) the record of round ``record["round"]``."""

    @abstractmethod
    def rounds(self, campaign_id: str) -> list[Row]:
        """The round records, in order."""


class TokenRepository(ABC):
    """API tokens; only a token's sha256 (``token_hash``) is ever stored."""

    @abstractmethod
    def add(self, row: Row) -> None: ...

    @abstractmethod
    def all(self) -> list[Row]:
        """Oldest first."""

    @abstractmethod
    def by_hash(self, token_hash: str) -> Row | None: ...

    @abstractmethod
    def revoke(self, token_id: str, *, at: str) -> Row | None:
        """Mark it revoked (once: an earlier revocation keeps its time); None for an unknown id."""


class EnrollmentRepository(ABC):
    """One-time enrollment tokens and the device identities they were spent on."""

    @abstractmethod
    def add_token(self, row: Row) -> None: ...

    @abstractmethod
    def tokens(self) -> list[Row]:
        """Oldest first."""

    @abstractmethod
    def token_by_hash(self, token_hash: str) -> Row | None: ...

    @abstractmethod
    def spend(self, token_id: str, identity: Row, *, at: str) -> None:
        """Mark the token used by ``identity["device_id"]`` and store the identity."""

    @abstractmethod
    def unspend(self, token_id: str, device_id: str, previous: Row | None) -> None:
        """Undo ``spend``: the token is usable again and the device's identity is ``previous`` (or none)."""

    @abstractmethod
    def identity(self, device_id: str) -> Row | None: ...

    @abstractmethod
    def identities(self) -> list[Row]:
        """By device id."""

    @abstractmethod
    def put_identity(self, row: Row) -> None:
        """Insert, or update the given columns of, the identity of ``row["device_id"]``."""

    @abstractmethod
    def broker_credentials(self) -> dict[str, str]:
        """Device id -> broker password hash, for every identity not revoked that has one."""


class AlertStateRepository(ABC):
    """Acknowledgments and silences of alerts. An acknowledgment is keyed by (kind, device_id, rollout_id), a
    silence by (kind, device_id), "" standing for no value and a silence's device "*" for every device. Times
    are ISO 8601 text in UTC, written alike (microseconds always), so that they compare as text."""

    @abstractmethod
    def acknowledge(self, row: Row) -> Row:
        """Insert or replace the acknowledgment of ``row``'s key; return it as stored."""

    @abstractmethod
    def acknowledgments(self) -> list[Row]:
        """Every acknowledgment, by key."""

    @abstractmethod
    def drop_acknowledgments(self, rows: list[Row]) -> int:
        """Delete each of ``rows`` that is still as it was read (same key and ``acked_at``: one made again
        meanwhile stays); return how many went."""

    @abstractmethod
    def silence(self, row: Row, *, now: str) -> Row:
        """Insert or replace the silence of ``row``'s key (silences over before ``now`` are deleted); return it."""

    @abstractmethod
    def silences(self, *, now: str) -> list[Row]:
        """The silences still in force at ``now`` (``until`` later), by key."""

    @abstractmethod
    def unsilence(self, kind: str, device_id: str) -> bool:
        """Delete that silence; False if there was none."""


class HealthReads(ABC):
    """Bounded reads of recent telemetry for the fleet's health signals (edgefleet.coordinator.health)."""

    @abstractmethod
    def latest_windows(self) -> dict[str, Row]:
        """Each device's latest telemetry row, by device id."""

    @abstractmethod
    def window_totals(self, since: str) -> dict[str, Row]:
        """Per device, over the reports received from ``since`` on: ``errors``, ``served`` (requests) and
        ``since`` (the first report with errors, or None)."""

    @abstractmethod
    def recent_windows(self, device_id: str, columns: list[str], *, limit: int, not_null: str | None = None,
                       bundle_digest: str | None = None, since: str | None = None,
                       only_true: str | None = None) -> list[Row]:  # fmt: skip
        """The device's newest ``limit`` rows (only ``columns`` and ``received_at``), newest first; if given,
        only rows where ``not_null`` has a value, where the flag ``only_true`` is set, of ``bundle_digest``,
        received from ``since`` on."""


class FleetStore(ABC):
    """The coordinator's state. Safe to use from several threads."""

    stages: StageRepository
    rollouts: RolloutRepository
    campaigns: CampaignRepository
    tokens: TokenRepository
    enrollment: EnrollmentRepository
    health: HealthReads
    alert_state: AlertStateRepository

    # -- bundles -------------------------------------------------------------------------
    @abstractmethod
    def add_bundle(self, row: Row) -> None:
        """Insert or replace by ``digest``; ``uploaded_at`` is set now."""

    @abstractmethod
    def bundle(self, digest: str) -> Row | None: ...

    @abstractmethod
    def bundles(self) -> list[Row]:
        """Newest upload first."""

    # -- devices -------------------------------------------------------------------------
    @abstractmethod
    def record_reported(self, state: ReportedState) -> None: ...

    @abstractmethod
    def record_availability(self, message: Availability) -> None: ...

    @abstractmethod
    def devices(self, device_class: str | None = None, *, tag: str | None = None, group: str | None = None,
                availability: str | None = None) -> list[Row]:  # fmt: skip
        """By device id, with ``reported`` decoded, ``tags`` a list, ``group`` and ``desired`` (its row or None)."""

    @abstractmethod
    def device(self, device_id: str) -> Row | None: ...

    @abstractmethod
    def flag_device(self, device_id: str, problem: str, *, device_class: str | None = None) -> None:
        """Record why the device's last report was refused (``problem``, ``problem_at``); the next report the
        coordinator accepts clears it. A device not seen before gets a row (of ``device_class``)."""

    @abstractmethod
    def label_device(self, device_id: str, *, tags: list[str] | None, group: str | None) -> Row:
        """Set tags and/or group (an empty group clears it); KeyError for an unknown device."""

    # -- desired state -------------------------------------------------------------------
    @abstractmethod
    def set_desired(self, device_id: str, bundle_digest: str | None, *, allow_downgrade: bool = False) -> int:
        """Store the new desired bundle; return its revision (strictly increasing per device). ``allow_downgrade``:
        the device may go below its active bundle's min_version (kept with the row: republished alike)."""

    @abstractmethod
    def desired_states(self) -> list[Row]:
        """Every device's desired row: device_id, revision, bundle_digest, allow_downgrade (0/1), updated_at."""

    # -- commands ------------------------------------------------------------------------
    @abstractmethod
    def record_command_sent(self, command: Command) -> None: ...

    @abstractmethod
    def record_command_result(self, result: CommandResult) -> bool:
        """Attach a result to the command it answers; False for a result of no command we sent."""

    @abstractmethod
    def commands(self, device_id: str, limit: int = 100) -> list[Row]:
        """Newest first, ``args`` decoded and ``ok`` a bool or None."""

    # -- telemetry -----------------------------------------------------------------------
    @abstractmethod
    def add_reports(self, reports: list[PreparedReport]) -> int:
        """Insert many at once, each once per message id, and fold the new ones into the rollups with
        them (all or nothing); return how many were new."""

    @abstractmethod
    def add_telemetry_batch(self, messages: list[Telemetry]) -> int:
        """Store reports that arrived now; see ``add_reports``."""

    def add_telemetry(self, message: Telemetry) -> bool:
        """Insert once per message id; return False for a duplicate delivery."""
        return self.add_telemetry_batch([message]) == 1

    @abstractmethod
    def refused_report(self, exc: Exception) -> bool:
        """Whether ``add_reports`` failed on a report's values (split the batch to find it) rather than
        as a store (locked, full, I/O: try the batch again later)."""

    @abstractmethod
    def telemetry(self, device_id: str, limit: int = 100) -> list[Row]:
        """The device's newest raw reports, newest first."""

    @abstractmethod
    def latest_telemetry(self, lookback: int = 30) -> list[Row]:
        """Per device that has reported: its latest window's arrival and drift alert, and each of
        ``LATEST_FIGURES`` from the latest of its last ``lookback`` windows that carries it."""

    @abstractmethod
    def telemetry_rollups(self, device_id: str, resolution: Resolution, *, since: datetime | None = None,
                          limit: int = 120) -> list[Row]:  # fmt: skip
        """A device's buckets from ``since`` on (the bucket holding it included), newest first."""

    @abstractmethod
    def fleet_rollups(self, resolution: Resolution, *, device_class: str | None = None,
                      since: datetime | None = None, limit: int = 120) -> list[Row]:  # fmt: skip
        """Buckets summed over every device, or over the devices of one class, newest first."""

    @abstractmethod
    def prune_telemetry(self, *, now: datetime | None = None, raw_days: float = 7, minute_days: float = 30,
                        hour_days: float = 365, chunk: int = 5000,
                        stop: threading.Event | None = None) -> dict[str, int]:  # fmt: skip
        """Delete what is past retention, ``chunk`` rows at a time; return the rows deleted per table."""

    @abstractmethod
    def close(self) -> None: ...
