"""Shared CLI output helpers: `--format json|table`, errors to stderr with an exit code."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.log_setup import configure_logging

__all__ = ["Format", "configure_logging", "fail", "print_data"]

console = Console()
err_console = Console(stderr=True)


class Format(StrEnum):
    table = "table"
    json = "json"


FormatOption = typer.Option(Format.table, "--format", help="Output as a table or as JSON.")


def print_data(rows: list[dict[str, Any]] | dict[str, Any], fmt: Format, *, columns: list[str] | None = None) -> None:
    if fmt == Format.json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    items = rows if isinstance(rows, list) else [rows]
    if isinstance(rows, dict) and columns is None:
        table = Table("key", "value", show_header=False)
        for key, value in rows.items():
            table.add_row(Text(str(key)), _cell(value))
        console.print(table)
        return
    cols = columns or sorted({k for row in items for k in row})
    table = Table(*cols)
    for row in items:
        table.add_row(*(_cell(row.get(c)) for c in cols))
    console.print(table)


def _cell(value: Any) -> Text:
    """A table cell as plain text: data is never read as rich markup ("[federated]", a device's error text)."""
    if value is None:
        return Text("-")
    if isinstance(value, dict | list):
        return Text(json.dumps(value, default=str))
    text = str(value)
    return Text(text[:16] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text)


def fail(message: str, code: ExitCode) -> NoReturn:
    err_console.print(Text.assemble(("error:", "red"), " ", message))  # the message is data, not markup
    raise typer.Exit(int(code))
