"""Typed command options, declared once.

An option is a dataclass field: its type, its default, and in its metadata (`opt(...)`) the help
text, the allowed range and, where it differs from the field name, the flag spelling. The CLI
builds its parameters from these fields (so `train` and `sweep` share one declaration), library
callers construct the same dataclasses, `check_ranges` validates them the same way, and saved
configs are read back through `from_dict`, which refuses unknown keys.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, Callable

from .errors import BadInputError


class Choice(str, enum.Enum):
    """A closed set of string values: shown as choices in --help, stored as the plain string."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def choices(name: str, values: str, module: str) -> Any:
    """A Choice enum from space-separated values ('per-image' becomes member per_image)."""
    return Choice(name, [(v.replace("-", "_"), v) for v in values.split()], module=module)


def opt(help: str, *, flags: str | None = None, min: float | None = None, max: float | None = None,
        min_open: bool = False, cli: bool = True, parse: Callable[[str], Any] | None = None,
        show: Callable[[Any], str] | None = None) -> dict[str, Any]:
    """Field metadata of one option.

    help: the --help text; flags: e.g. "--iprb/--no-iprb" (default --field-name, booleans --x/--no-x);
    min/max: the allowed range (min_open: strictly above min); cli=False: not a command-line option;
    parse/show: for a value typed as text on the command line (e.g. "512,448" -> (512, 448))."""
    return {"help": help, "flags": flags, "min": min, "max": max, "min_open": min_open, "cli": cli,
            "parse": parse, "show": show}


def progress_field(what: str = "Progress bar") -> Any:
    """The --progress/--no-progress option every long-running command has."""
    return dataclasses.field(default=True, metadata=opt(f"{what} on stderr (only on a terminal)",
                                                        flags="--progress/--no-progress"))


def allow_missing_field(what: str = "images missing on disk") -> Any:
    """The --allow-missing option of the builders."""
    return dataclasses.field(default=False, metadata=opt(
        f"Drop {what} (listed in dataset.json) instead of refusing"))


def flag_name(f: dataclasses.Field) -> str:
    """The long flag of a field, as the user types it (the first spelling)."""
    flags = f.metadata.get("flags")
    if flags:
        return flags.split("/")[0]
    return "--" + f.name.replace("_", "-")


def check_ranges(obj: Any) -> None:
    """Every numeric field inside its declared range, every choice in its set (BadInputError names the flag)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        meta = f.metadata
        kind = _base_type(hints[f.name])
        if isinstance(kind, type) and issubclass(kind, Choice) and value is not None:
            try:
                setattr(obj, f.name, kind(value))
            except ValueError:
                raise BadInputError(f"{flag_name(f)} {value!r}: use one of {', '.join(c.value for c in kind)}") from None
        for v in (value if isinstance(value, tuple) else (value,)):
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            lo, hi = meta.get("min"), meta.get("max")
            if v != v:  # NaN
                raise BadInputError(f"{flag_name(f)} nan: not a number")
            if lo is not None and (v < lo or (meta.get("min_open") and v == lo)):
                raise BadInputError(f"{flag_name(f)} {v}: must be {'>' if meta.get('min_open') else '>='} {lo}")
            if hi is not None and v > hi:
                raise BadInputError(f"{flag_name(f)} {v}: must be <= {hi}")


def _base_type(tp: Any) -> Any:
    """int for Optional[int], Choice subclasses as they are."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain JSON values (choices as strings, tuples as lists, nested dataclasses as dicts)."""
    out = {}
    for f in dataclasses.fields(obj):
        out[f.name] = _plain(getattr(obj, f.name))
    return out


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        return to_dict(v)
    if isinstance(v, Choice):
        return v.value
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def from_dict(cls: type, data: Any, where: str) -> Any:
    """The dataclass `cls` from plain values, strictly: an unknown key or a value of the wrong
    type is a BadInputError naming `where` and the key; absent keys take their defaults."""
    if not isinstance(data, dict):
        raise BadInputError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise BadInputError(f"{where}: unknown option(s) {', '.join(unknown)} (this mlrpl knows {', '.join(names)})")
    kwargs = {k: _convert(hints[k], v, f"{where}: {k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise BadInputError(f"{where}: {e}") from None


def _convert(tp: Any, v: Any, where: str) -> Any:
    base = _base_type(tp)
    if v is None:
        if base is not tp:  # Optional
            return None
        raise BadInputError(f"{where}: null is not allowed")
    if dataclasses.is_dataclass(base):
        return from_dict(base, v, where)
    if isinstance(base, type) and issubclass(base, Choice):
        try:
            return base(v)
        except ValueError:
            raise BadInputError(f"{where}: {v!r} is not one of {', '.join(c.value for c in base)}") from None
    origin = typing.get_origin(base)
    if origin is tuple:
        if not isinstance(v, list):
            raise BadInputError(f"{where}: expected a list")
        item = typing.get_args(base)[0]
        return tuple(_convert(item, x, where) for x in v)
    if base is bool:
        if not isinstance(v, bool):
            raise BadInputError(f"{where}: expected true or false, got {v!r}")
        return v
    if base is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise BadInputError(f"{where}: expected an integer, got {v!r}")
        return v
    if base is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise BadInputError(f"{where}: expected a number, got {v!r}")
        return float(v)
    if base in (str, Path):
        if not isinstance(v, str):
            raise BadInputError(f"{where}: expected text, got {v!r}")
        return base(v)
    return v


def parse_int_list(text: str) -> tuple[int, ...]:
    """'512,448,384' -> (512, 448, 384)."""
    try:
        values = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise BadInputError(f"{text!r}: expected comma-separated integers, e.g. 512,448,384") from None
    if not values:
        raise BadInputError(f"{text!r}: expected at least one integer")
    return values


def show_int_list(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)
