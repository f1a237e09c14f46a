"""Reading raw text and JSON annotation files with errors that name the file and the position."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import BadInputError


def load_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line, column and byte offset."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BadInputError(f"{path}: file not found") from None
    return parse_json(data, path)


def parse_json(data: bytes, path: Path) -> Any:
    """Parse bytes read from `path` (a UTF-8 BOM is accepted: json.loads of bytes skips it); a syntax
    error names the file, line, column and byte offset."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise BadInputError(
            f"{path}: malformed JSON at line {e.lineno}, column {e.colno} (byte {e.pos}): {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: not UTF-8 text at byte {e.start}") from None


def read_text(path: Path, what: str = "file") -> str:
    """A raw UTF-8 text file, without the BOM a Windows editor puts first; a missing file or bytes that
    are not UTF-8 name the file and the byte."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise BadInputError(f"{path}: is a folder, not a {what}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: not UTF-8 text at byte {e.start}") from None


def check_records(path: Path, what: str, records: list, fields: dict[str, type],
                  optional: dict[str, type] | None = None) -> None:
    """Every record of `path`'s `what` list a JSON object with `fields` of these types, and the
    `optional` ones of theirs when present; the first bad one is named (index, id, field, value)."""
    optional = optional or {}
    for k, rec in enumerate(records):
        if type(rec) is dict and all(type(rec.get(f)) is t for f, t in fields.items()) and all(
                f not in rec or type(rec[f]) is t for f, t in optional.items()):
            continue
        if not isinstance(rec, dict):
            raise BadInputError(f"{path}: {what}[{k}] is {type(rec).__name__}, not an object")
        f, t = next((f, t) for f, t in [*fields.items(), *optional.items()]
                    if (f in rec or f in fields) and type(rec.get(f)) is not t)
        got = "missing" if f not in rec else f"{type(rec[f]).__name__} {str(rec[f])[:30]!r}"
        ident = next((f" (id {rec[i]})" for i in ("id", "image_id") if i in rec and i != f), "")
        raise BadInputError(f"{path}: {what}[{k}]{ident} field {f!r} must be {t.__name__}, got {got}")
