"""Render the config references in docs/ from the pydantic models that read the configs.

Every key of the coordinator's config (edgefleet.coordinator.config.CoordinatorConfig) and the agent's
(edgefleet.agent.config.AgentConfig), at any depth, with its type and limits, default and description.
tests/test_config_reference.py fails when a committed file differs from what this renders now.

Usage: python scripts/config_reference.py [--check]
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from edgefleet.agent.config import AgentConfig
from edgefleet.coordinator.config import CoordinatorConfig

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Doc:
    path: str  # relative to the repository
    title: str
    model: type[BaseModel]
    source: str  # the module that defines the model, for the reader
    intro: str


DOCS = [
    Doc(
        "docs/coordinator-config.md",
        "Coordinator config reference",
        CoordinatorConfig,
        "coordinator/config.py",
        "The file `edgefleet coordinator serve --config FILE` reads, in TOML. Unknown keys are refused, and a "
        "relative path is taken from the file's folder. `edgefleet coordinator validate-config FILE` checks a "
        "file and prints each problem with its key path (never its value: the file holds tokens and passwords); "
        "a few rules span several keys, and it reports those too.",
    ),
    Doc(
        "docs/agent-config.md",
        "Agent config reference",
        AgentConfig,
        "agent/config.py",
        "The file `edgefleet agent run --config FILE` reads, in TOML (`edgefleet agent enroll` writes a complete "
        "one). Unknown keys are refused, and a relative path is taken from the file's folder. `edgefleet agent "
        "validate-config FILE` checks a file, and the files and folders it names, and prints each problem with "
        "its key path, value and reason.",
    ),
]


@dataclass(frozen=True)
class Section:
    key: str  # dotted, "" for the top level
    model: type[BaseModel]
    field: FieldInfo | None  # the field that holds this table, None at the top level
    optional: bool


def render(doc: Doc) -> str:
    lines = [
        f"# {doc.title}",
        "",
        f"<!-- Generated from {doc.source} by `python scripts/config_reference.py`: do not edit by hand. -->",
        "",
        doc.intro,
        "",
    ]
    for section in _sections(Section("", doc.model, None, optional=False)):
        lines += _render_section(section)
    return "\n".join(lines).rstrip() + "\n"


def _sections(section: Section) -> list[Section]:
    """The section and, depth first in field order, every table below it."""
    found = [section]
    for name, field in section.model.model_fields.items():
        model, optional = _table_of(field.annotation)
        if model is not None:
            key = f"{section.key}.{name}" if section.key else name
            found += _sections(Section(key, model, field, optional or section.optional))
    return found


def _render_section(section: Section) -> list[str]:
    heading = f"[{section.key}]" if section.key else "Top level"
    lines = [f"## {heading}", ""]
    described, docstring = _description(section.field), _docstring(section.model)
    if docstring.startswith(described.rstrip(".")):  # "Federated campaigns." and "Federated campaigns (needs ..."
        described = ""
    about = [text for text in (described, docstring) if text]
    if section.optional:
        about.append("The table is optional; its required keys are required only when it is given.")
    if about:
        lines += [_markdown(" ".join(about)), ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in section.model.model_fields.items():
        cells = (f"`{name}`", _type(field), _default(field), _markdown(_field_text(section.key, name, field)))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines.append("")
    return lines


def _table_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model of a table-valued field (``Model`` or ``Model | None``), and whether it may be left out."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return args[0], True
    return None, False


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin is list:
        return f"array of {_type_name(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    names = {str: "string", int: "integer", float: "float", bool: "boolean", Path: "path"}
    if annotation in names:
        return names[annotation]
    raise TypeError(f"no name for the type {annotation!r}: teach scripts/config_reference.py")


def _type(field: FieldInfo) -> str:
    limits = []
    for item in field.metadata:
        for attr, text in (("ge", ">= {}"), ("gt", "> {}"), ("le", "<= {}"), ("lt", "< {}")):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                limits.append(text.format(getattr(item, attr)))
        if isinstance(item, annotated_types.MinLen):
            limits.append(f"at least {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            limits.append(f"at most {item.max_length}")
        elif getattr(item, "pattern", None):
            limits.append(f"matching `{item.pattern}`")
    return ", ".join([_type_name(field.annotation), *limits])


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        return "each key's default" if isinstance(value, BaseModel) else _toml(value)
    if field.default is PydanticUndefined:
        return "required"
    return "unset" if field.default is None else _toml(field.default)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str | Path):
        return f'`"{value}"`'
    if isinstance(value, list):
        return "`[" + ", ".join(_toml(v).strip("`") for v in value) + "]`"
    return f"`{value}`"


def _field_text(parent: str, name: str, field: FieldInfo) -> str:
    model, _ = _table_of(field.annotation)
    if model is not None:
        key = f"{parent}.{name}" if parent else name
        text = _description(field) or _docstring(model)
        return f"{text} See [`[{key}]`](#{_anchor(f'[{key}]')}).".strip()
    return _description(field)


def _description(field: FieldInfo | None) -> str:
    if field is None:
        return ""
    parts = [f"**{field.title}.**" if field.title else "", field.description or ""]
    return " ".join(p for p in parts if p)


def _docstring(model: type[BaseModel]) -> str:
    """A model's own docstring (not pydantic's BaseModel's), joined into one paragraph."""
    doc = model.__dict__.get("__doc__")
    return " ".join(inspect.cleandoc(doc).split()) if doc else ""


def _markdown(text: str) -> str:
    """Docstring text as Markdown: reST's ``code`` as `code`, and <placeholders> outside code kept visible."""
    parts = text.replace("``", "`").split("`")
    for i in range(0, len(parts), 2):  # the even parts are outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation other than - and _ dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="Write nothing; exit 1 if a file is out of date.")
    args = parser.parse_args(argv)
    stale = []
    for doc in DOCS:
        path, text = ROOT / doc.path, render(doc)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(doc.path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    verb = "out of date" if args.check else "written"
    for name in stale:
        print(f"{name}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
