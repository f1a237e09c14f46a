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
    """Parse bytes read from `path`; a syntax error names the file, line, column and byte offset."""
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise BadInputError(
            f"{path}: malformed JSON at line {e.lineno}, column {e.colno} (byte {e.pos}): {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: not UTF-8 text at byte {e.start}") from None


def read_text(path: Path, what: str = "file") -> str:
    """A raw UTF-8 text file; a missing file or bytes that are not UTF-8 name the file and the byte."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInputError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise BadInputError(f"{path}: is a folder, not a {what}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: not UTF-8 text at byte {e.start}") from None
