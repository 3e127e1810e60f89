"""Shared CLI output helpers: `--format json|table`, errors to stderr with an exit code.

A command's ``--format`` (``FormatOption``) is recorded in its click context as it is parsed, so
``fail`` answers in the same format wherever it is called from: under ``--format json`` an error is
one JSON object on stderr, ``{"error": "...", "exit_code": N}``, and stdout stays empty.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import click
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgefleet.common.exit_codes import ExitCode
from edgefleet.common.log_setup import configure_logging

__all__ = ["Format", "FormatOption", "configure_logging", "current_format", "existing_file", "fail", "print_data"]

console = Console()
err_console = Console(stderr=True)


class Format(StrEnum):
    table = "table"
    json = "json"


_FORMAT_KEY = "edgefleet.format"  # in click's ctx.meta, which a command's context shares with its parents


def _record_format(ctx: typer.Context, value: Format | str) -> Format:
    fmt = Format(value)
    ctx.meta[_FORMAT_KEY] = fmt
    return fmt


# Eager: recorded before the command's other parameters are checked, so that their failures (a missing
# file, see existing_file) are already told in the format asked for.
FormatOption = typer.Option(
    Format.table, "--format", help="Output as a table or as JSON.", callback=_record_format, is_eager=True
)


def current_format() -> Format:
    """The ``--format`` of the command running now (table outside a command, or for one without it)."""
    ctx = click.get_current_context(silent=True)
    return Format(ctx.meta.get(_FORMAT_KEY, Format.table)) if ctx is not None else Format.table


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


def fail(message: str, code: ExitCode, *, problems: Sequence[str] = ()) -> NoReturn:
    """Print the error to stderr, as text or (under ``--format json``) as one JSON object, and exit with
    ``code``; ``problems`` are the findings behind it, one a line (or a list in the JSON)."""
    if current_format() == Format.json:
        error: dict[str, Any] = {"error": message, "exit_code": int(code)}
        if problems:
            error["problems"] = list(problems)
        typer.echo(json.dumps(error), err=True)  # not rich: it would wrap a long line at the console's width
    else:
        # The message is data, not markup, and is not wrapped at the console's width: a path stays greppable.
        err_console.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
        for problem in problems:
            err_console.print(Text(f"  {problem}"), soft_wrap=True)
    raise typer.Exit(int(code))


def existing_file(value: Path | Sequence[Path] | None) -> Path | Sequence[Path] | None:
    """A typer ``callback`` in place of ``exists=True`` (for one path or a repeatable option's): a missing
    file exits NOT_FOUND (5), not typer's usage error (2)."""
    for path in [value] if isinstance(value, Path) else value or ():
        if not path.exists():
            fail(f"{path}: no such file", ExitCode.NOT_FOUND)
    return value
