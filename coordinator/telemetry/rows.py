"""A telemetry report as the ingest stores it: its raw row and its contribution to the rollups.

Prepared where the report arrives (the telemetry receiver's process, coordinator/telemetry/receiver.py),
so the writer (coordinator/telemetry/writer.py) only inserts rows and adds contributions up. Plain tuples and
lists of plain values: cheap to hand from one process to another (~1.5 us a report, pickled).
"""

from __future__ import annotations

import operator
from datetime import datetime
from typing import Any, get_args

from pydantic_core import to_json

from edgefleet.coordinator.telemetry.rollups import CONTRIBUTION_LAYOUT, TELEMETRY_JSON_FIELDS, contribution
from edgefleet.protocol.messages import Telemetry

__all__ = [
    "REPORT_FIELDS",
    "REPORT_LAYOUT",
    "TELEMETRY_COLUMNS",
    "PreparedReport",
    "prepare",
    "prepare_arrived",
    "telemetry_row",
]

# A stored report: its fields but the schema version, then when it arrived.
REPORT_FIELDS = [name for name in Telemetry.model_fields if name != "schema_version"]
TELEMETRY_COLUMNS = [*REPORT_FIELDS, "received_at"]
# The writer tells duplicates apart by a row's first value.
assert REPORT_FIELDS[0] == "message_id", "the message id must lead a telemetry row"

# (row: the values of TELEMETRY_COLUMNS, (device id, minute start): its rollup bucket, its rollup values)
PreparedReport = tuple[list[Any], tuple[str, int], list[Any]]
# What a prepared report's row and contribution hold: the receiver's and the writer's must be the same.
REPORT_LAYOUT = (tuple(TELEMETRY_COLUMNS), CONTRIBUTION_LAYOUT)


def prepare(message: Telemetry, received_at: datetime) -> PreparedReport:
    """``message``, arrived at ``received_at``, ready for ``FleetStore.add_reports``."""
    return prepare_arrived(message, received_at.isoformat(), received_at.timestamp())


def prepare_arrived(message: Telemetry, received_iso: str, received_s: float) -> PreparedReport:
    """``prepare`` for many reports of one arrival: its time as ISO 8601 text and in epoch seconds."""
    return (telemetry_row(message, received_iso), *contribution(message, received_s))


def telemetry_row(message: Telemetry, received_at: str) -> list[Any]:
    """The values of ``TELEMETRY_COLUMNS``, as ``model_dump(mode="json")`` would give them (datetimes in
    ISO 8601 with "Z" for UTC), lists and dicts as compact JSON text (NaN and Infinity as ``json`` writes
    them), read straight off the model: pydantic's model serializer took ~12 us a report, and ``json.dumps``
    ~4 us for a latency histogram where pydantic-core's encoder takes ~1.5."""
    row = [*_field_values(message.__dict__), received_at]
    for i in _JSON_AT:
        value = row[i]
        row[i] = (
            to_json(value, inf_nan_mode="constants").decode() if value else ("{}" if isinstance(value, dict) else "[]")
        )
    for i in _TIME_AT:
        value = row[i]
        if isinstance(value, datetime):
            text = value.isoformat()
            row[i] = text[:-6] + "Z" if text.endswith("+00:00") else text
    return row


_field_values = operator.itemgetter(*REPORT_FIELDS)
# Where in a row the values that are not stored as they are lie: JSON text, and datetimes in ISO 8601.
_JSON_AT = [i for i, name in enumerate(REPORT_FIELDS) if name in TELEMETRY_JSON_FIELDS]
_TIME_AT = [
    i for i, name in enumerate(REPORT_FIELDS)
    if datetime in (Telemetry.model_fields[name].annotation, *get_args(Telemetry.model_fields[name].annotation))
]  # fmt: skip
