"""The config references in docs/ are what scripts/config_reference.py renders from the config models now."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


SCRIPT = _script()


@pytest.mark.parametrize("doc", SCRIPT.DOCS, ids=lambda doc: doc.path)
def test_the_committed_reference_is_what_the_models_render_now(doc) -> None:  # type: ignore[no-untyped-def]
    path = ROOT / doc.path
    committed = path.read_text() if path.exists() else ""
    assert committed == SCRIPT.render(doc), f"{doc.path} is out of date: run python scripts/config_reference.py"


def _keys(model: type[BaseModel], table: str = "") -> list[tuple[str, str, type[BaseModel] | None]]:
    """Each (table, key, model of a table-valued key) of a config model, nested tables included."""
    found = []
    for name, field in model.model_fields.items():
        nested = SCRIPT._table_of(field.annotation)[0]
        found.append((table, name, nested))
        if nested is not None:
            found += _keys(nested, f"{table}.{name}" if table else name)
    return found


@pytest.mark.parametrize("doc", SCRIPT.DOCS, ids=lambda doc: doc.path)
def test_every_key_has_a_row_in_its_table_with_type_default_and_description(doc) -> None:  # type: ignore[no-untyped-def]
    text = SCRIPT.render(doc)
    sections = dict(part.split("\n", 1) for part in text.split("\n## ")[1:])  # heading -> body
    for table, key, nested in _keys(doc.model):
        body = sections[f"[{table}]" if table else "Top level"]
        [row] = [line for line in body.splitlines() if line.startswith(f"| `{key}` |")]
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        assert len(cells) == 4 and all(cells[:3]), row  # key, type, default; the description may be missing
        if nested is not None:
            assert (f"[{table}.{key}]" if table else f"[{key}]") in sections


def test_the_coordinator_reference_shows_defaults_limits_and_nested_tables() -> None:
    text = (ROOT / "docs" / "coordinator-config.md").read_text()
    assert "| `port` | integer, >= 0, <= 65535 | `8080` | REST API port. |" in text
    assert "| `data_dir` | path | required |" in text
    assert "## [broker_auth]" in text and "The table is optional" in text
    assert "{manifest\\|file}" in text  # a | in a description does not split its table row
