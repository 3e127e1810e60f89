"""Registry stages, campaigns, rollouts, tokens, enrollment and health reads in the PostgreSQL store.

Each method is one transaction of the store's pool (``PostgresStore.transaction``). Rows are written
with the few helpers below, which name tables and columns as SQL identifiers (never as text spliced in).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from edgefleet.coordinator.store.base import (
    CampaignRepository,
    EnrollmentRepository,
    HealthReads,
    RolloutRepository,
    StageRepository,
    TokenRepository,
)
from edgefleet.coordinator.store.views import check_health_columns, dump_campaign, load_campaign

if TYPE_CHECKING:
    from edgefleet.coordinator.store.postgres import PostgresStore

__all__ = [
    "PostgresCampaigns",
    "PostgresEnrollment",
    "PostgresHealthReads",
    "PostgresRollouts",
    "PostgresStages",
    "PostgresTokens",
    "insert",
    "plain",
    "update",
    "upsert",
]

Conn = psycopg.Connection[Any]


def plain(value: Any) -> Any:
    """A value as SQLite would have stored it: booleans are integers (the columns are)."""
    return int(value) if isinstance(value, bool) else value


def _names(columns: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, columns))


def insert(conn: Conn, table: str, row: dict[str, Any], *, on_conflict_do_nothing: bool = False) -> None:
    conn.execute(
        sql.SQL("insert into {} ({}) values ({}){}").format(
            sql.Identifier(table),
            _names(row),
            sql.SQL(", ").join(sql.Placeholder() * len(row)),
            sql.SQL(" on conflict do nothing") if on_conflict_do_nothing else sql.SQL(""),
        ),
        [plain(v) for v in row.values()],
    )


def insert_many(conn: Conn, table: str, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        insert(conn, table, row)


def upsert(conn: Conn, table: str, row: dict[str, Any], *, key: tuple[str, ...]) -> None:
    """Insert ``row``, or update the columns it names of the row with its ``key``."""
    changed = [c for c in row if c not in key]
    action = (
        sql.SQL("update set {}").format(
            sql.SQL(", ").join(sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c)) for c in changed)
        )
        if changed
        else sql.SQL("nothing")
    )
    conn.execute(
        sql.SQL("insert into {} ({}) values ({}) on conflict ({}) do {}").format(
            sql.Identifier(table), _names(row), sql.SQL(", ").join(sql.Placeholder() * len(row)), _names(key), action
        ),
        [plain(v) for v in row.values()],
    )


def update(conn: Conn, table: str, where: dict[str, Any], fields: dict[str, Any]) -> int:
    """Set ``fields`` on the rows whose columns equal ``where``; return how many rows matched."""
    if not fields:
        return 0
    return conn.execute(
        sql.SQL("update {} set {} where {}").format(
            sql.Identifier(table),
            sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in fields),
            sql.SQL(" and ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in where),
        ),
        [plain(v) for v in (*fields.values(), *where.values())],
    ).rowcount


def _select(conn: Conn, table: str, where: dict[str, Any] | None = None, *, order_by: str | None = None,
            limit: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    query = sql.SQL("select * from {}").format(sql.Identifier(table))
    if where:
        query += sql.SQL(" where ") + sql.SQL(" and ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in where)
    if order_by:
        query += sql.SQL(" order by " + order_by)  # a constant of this module's, never user input
    if limit is not None:
        query += sql.SQL(" limit {}").format(sql.Literal(int(limit)))
    return conn.execute(query, list((where or {}).values())).fetchall()


def _first(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    return rows[0] if rows else None


class PostgresStages(StageRepository):
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def stages(self, model: str) -> dict[str, str]:
        with self.store.transaction() as conn:
            return {row["version"]: row["stage"] for row in _select(conn, "stages", {"model": model})}

    def move(self, model: str, version: str, stage: str, *, at: str) -> None:
        with self.store.transaction() as conn:
            # One move per model at a time, whichever process makes it: production is held by one version.
            conn.execute("select pg_advisory_xact_lock(hashtext(%s))", [f"edgefleet-stages:{model}"])
            if stage == "production":
                for row in _select(conn, "stages", {"model": model, "stage": "production"}):
                    if row["version"] != version:
                        update(conn, "stages", {"model": model, "version": row["version"]},
                               {"stage": "archived", "updated_at": at})  # fmt: skip
                        _history(conn, model, row["version"], "archived", "production", at)
            previous = _first(_select(conn, "stages", {"model": model, "version": version}))
            upsert(conn, "stages", {"model": model, "version": version, "stage": stage, "updated_at": at},
                   key=("model", "version"))  # fmt: skip
            _history(conn, model, version, stage, previous["stage"] if previous else "staging", at)

    def history(self, model: str) -> list[dict[str, Any]]:
        with self.store.transaction() as conn:
            return _select(conn, "stage_history", {"model": model}, order_by="id")

    def earlier_production(self, model: str, current: str) -> list[str]:
        with self.store.transaction() as conn:
            rows = conn.execute(
                "select version from stage_history where model = %s and stage = 'production' and version != %s"
                " order by id desc",
                [model, current],
            ).fetchall()
        return [row["version"] for row in rows]


def _history(conn: Conn, model: str, version: str, stage: str, previous: str, at: str) -> None:
    insert(conn, "stage_history", {"model": model, "version": version, "stage": stage, "previous": previous, "at": at})


class PostgresCampaigns(CampaignRepository):
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def create(self, row: dict[str, Any]) -> None:
        with self.store.transaction() as conn:
            insert(conn, "campaigns", dump_campaign(row))

    def get(self, campaign_id: str) -> dict[str, Any] | None:
        with self.store.transaction() as conn:
            row = _first(_select(conn, "campaigns", {"id": campaign_id}))
        return load_campaign(row) if row else None

    def recent(self, limit: int) -> list[dict[str, Any]]:
        with self.store.transaction() as conn:
            rows = _select(conn, "campaigns", order_by="created_at desc", limit=limit)
        return [load_campaign(r) for r in rows]

    def update(self, campaign_id: str, fields: dict[str, Any]) -> None:
        with self.store.transaction() as conn:
            update(conn, "campaigns", {"id": campaign_id}, dump_campaign(fields))

    def put_round(self, campaign_id: str, record: dict[str, Any], *, at: str) -> None:
        with self.store.transaction() as conn:
            upsert(conn, "campaign_rounds", {"campaign_id": campaign_id, "round": record["round"],
                                             "status": record["status"], "record": json.dumps(record), "at": at},
                   key=("campaign_id", "round"))  # fmt: skip

    def rounds(self, campaign_id: str) -> list[dict[str, Any]]:
        with self.store.transaction() as conn:
            rows = _select(conn, "campaign_rounds", {"campaign_id": campaign_id}, order_by="round")
        return [json.loads(r["record"]) for r in rows]


class PostgresRollouts(RolloutRepository):
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def create(self, rollout: dict[str, Any], members: list[dict[str, Any]]) -> None:
        with self.store.transaction() as conn:
            insert(conn, "rollouts", rollout)
            insert_many(conn, "rollout_devices", members)

    def get(self, rollout_id: str) -> dict[str, Any] | None:
        with self.store.transaction() as conn:
            return _first(_select(conn, "rollouts", {"id": rollout_id}))

    def ids(self, *, status: str | None = None) -> list[str]:
        with self.store.transaction() as conn:
            rows = _select(conn, "rollouts", {"status": status} if status else None, order_by="created_at desc")
        return [r["id"] for r in rows]

    def update(self, rollout_id: str, fields: dict[str, Any]) -> None:
        with self.store.transaction() as conn:
            update(conn, "rollouts", {"id": rollout_id}, fields)

    def members(self, rollout_id: str) -> list[dict[str, Any]]:
        with self.store.transaction() as conn:
            return _select(conn, "rollout_devices", {"rollout_id": rollout_id}, order_by="wave, device_id")

    def update_member(self, rollout_id: str, device_id: str, fields: dict[str, Any]) -> None:
        with self.store.transaction() as conn:
            update(conn, "rollout_devices", {"rollout_id": rollout_id, "device_id": device_id}, fields)

    def add_event(self, event: dict[str, Any]) -> None:
        with self.store.transaction() as conn:
            insert(conn, "events", event)

    def events(self, rollout_id: str | None, limit: int) -> list[dict[str, Any]]:
        with self.store.transaction() as conn:
            return _select(conn, "events", {"rollout_id": rollout_id} if rollout_id else None, order_by="id desc",
                           limit=limit)  # fmt: skip

    def count_by_status(self) -> dict[str, int]:
        with self.store.transaction() as conn:
            rows = conn.execute("select status, count(*) as n from rollouts group by status").fetchall()
        return {r["status"]: int(r["n"]) for r in rows}


class PostgresTokens(TokenRepository):
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def add(self, row: dict[str, Any]) -> None:
        with self.store.transaction() as conn:
            insert(conn, "api_tokens", row)

    def all(self) -> list[dict[str, Any]]:
        with self.store.transaction() as conn:
            return _select(conn, "api_tokens", order_by="created_at")

    def by_hash(self, token_hash: str) -> dict[str, Any] | None:
        with self.store.transaction() as conn:
            return _first(_select(conn, "api_tokens", {"token_hash": token_hash}))

    def revoke(self, token_id: str, *, at: str) -> dict[str, Any] | None:
        with self.store.transaction() as conn:
            return conn.execute(
                "update api_tokens set revoked_at = coalesce(revoked_at, %s) where token_id = %s returning *",
                [at, token_id],
            ).fetchone()


class PostgresEnrollment(EnrollmentRepository):
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def add_token(self, row: dict[str, Any]) -> None:
        with self.store.transaction() as conn:
            insert(conn, "enroll_tokens", row)

    def tokens(self) -> list[dict[str, Any]]:
        with self.store.transaction() as conn:
            return _select(conn, "enroll_tokens", order_by="created_at")

    def token_by_hash(self, token_hash: str) -> dict[str, Any] | None:
        with self.store.transaction() as conn:
            return _first(_select(conn, "enroll_tokens", {"token_hash": token_hash}))

    def spend(self, token_id: str, identity: dict[str, Any], *, at: str) -> None:
        with self.store.transaction() as conn:
            update(conn, "enroll_tokens", {"token_id": token_id}, {"used_at": at, "used_by": identity["device_id"]})
            upsert(conn, "identities", identity, key=("device_id",))

    def unspend(self, token_id: str, device_id: str, previous: dict[str, Any] | None) -> None:
        with self.store.transaction() as conn:
            update(conn, "enroll_tokens", {"token_id": token_id}, {"used_at": None, "used_by": None})
            if previous is None:
                conn.execute("delete from identities where device_id = %s", [device_id])
            else:
                upsert(conn, "identities", previous, key=("device_id",))

    def identity(self, device_id: str) -> dict[str, Any] | None:
        with self.store.transaction() as conn:
            return _first(_select(conn, "identities", {"device_id": device_id}))

    def identities(self) -> list[dict[str, Any]]:
        with self.store.transaction() as conn:
            return _select(conn, "identities", order_by="device_id")

    def put_identity(self, row: dict[str, Any]) -> None:
        with self.store.transaction() as conn:
            upsert(conn, "identities", row, key=("device_id",))

    def broker_credentials(self) -> dict[str, str]:
        with self.store.transaction() as conn:
            rows = conn.execute(
                "select device_id, broker_password_hash from identities"
                " where revoked_at is null and broker_password_hash is not null"
            ).fetchall()
        return {r["device_id"]: r["broker_password_hash"] for r in rows}


class PostgresHealthReads(HealthReads):
    # Every read is bounded by an index: per device (its latest window, its newest windows) or by the
    # window's arrivals, never by the size of the raw telemetry.
    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def latest_windows(self) -> dict[str, dict[str, Any]]:
        with self.store.transaction() as conn:
            rows = conn.execute(
                "select t.* from devices d join lateral (select * from telemetry where device_id = d.device_id"
                " order by received_at desc limit 1) t on true"
            ).fetchall()
        return {row["device_id"]: row for row in rows}

    def window_totals(self, since: str) -> dict[str, dict[str, Any]]:
        with self.store.transaction() as conn:
            rows = conn.execute(
                "select device_id, sum(error_count)::bigint as errors,"
                " (sum(inference_count) + sum(error_count))::bigint as served,"
                " min(case when error_count > 0 then received_at end) as since"
                " from telemetry where received_at >= %s group by device_id",
                [since],
            ).fetchall()
        return {row["device_id"]: row for row in rows}

    def recent_windows(
        self,
        device_id: str,
        columns: list[str],
        *,
        limit: int,
        not_null: str | None = None,
        bundle_digest: str | None = None,
        since: str | None = None,
        only_true: str | None = None,
    ) -> list[dict[str, Any]]:
        check_health_columns(*columns, not_null, only_true)
        where: list[sql.SQL | sql.Composed] = [sql.SQL("device_id = %s")]
        args = [device_id]
        if not_null:
            where.append(sql.SQL("{} is not null").format(sql.Identifier(not_null)))
        if only_true:
            where.append(sql.SQL("{} = 1").format(sql.Identifier(only_true)))
        if bundle_digest is not None:
            where.append(sql.SQL("bundle_digest = %s"))
            args.append(bundle_digest)
        if since is not None:
            where.append(sql.SQL("received_at >= %s"))
            args.append(since)
        query = sql.SQL("select {} from telemetry where {} order by received_at desc limit {}").format(
            _names(dict.fromkeys(["received_at", *columns])), sql.SQL(" and ").join(where), sql.Literal(int(limit))
        )
        with self.store.transaction() as conn:
            return conn.execute(query, args).fetchall()
