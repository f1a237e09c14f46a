"""The one way every builder reads a raw release's text lists and CSVs, turns the file names its
annotations give into paths under the raw root, and makes keys from them.

Text: what editors and Windows exports add is never data: a UTF-8 BOM, CRLF or CR line ends,
blank lines, spaces around a value, a known header row (skipped wherever the format allows one,
refused when it comes again later: two files pasted together), trailing empty columns.
Paths: `\\` is a folder separator (NUS-WIDE's lists and Windows exports write it; a POSIX file
name holding a backslash is not supported), `./` and doubled slashes are dropped, and a path
that would leave the root (absolute, a drive, `..`) is refused naming the file and record.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from .errors import BadInputError
from .jsonio import read_text

_LINE_END = re.compile(r"\r\n|\r|\n")


def read_lines(path: Path, what: str = "file") -> list[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line."""
    text = read_text(Path(path), what)
    return [(n, s) for n, line in enumerate(_LINE_END.split(text), 1) if (s := line.strip())]


def read_csv(path: Path, what: str = "CSV file", header: Sequence[str] | None = None,
             header_required: bool = False) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(header or None, [(line number, stripped fields)]) of a CSV, blank rows left out.

    `header`: the format's known header; a first row equal to it (case and spaces aside) is the
    header, the same row later is refused. `header_required`: the first row is a header whatever it
    holds (the lab CSV). Trailing header columns without a name (a trailing comma on every line)
    are dropped when empty in every row, and so are empty fields past the header's last column."""
    text = read_text(Path(path), what)
    try:
        rows = [(reader.line_num, [x.strip() for x in r]) for reader in [csv.reader(io.StringIO(text, newline=""))]
                for r in reader]
    except csv.Error as e:
        raise BadInputError(f"{path}: malformed CSV ({e})") from None
    rows = [(n, r) for n, r in rows if any(r)]
    known = [h.lower() for h in header] if header else None

    def is_header(r: list[str]) -> bool:
        return known is not None and [x.lower() for x in r[:len(known)]] == known

    head = None
    if rows and (header_required or is_header(rows[0][1])):
        head = rows.pop(0)[1]
        while head and not head[-1]:
            k = len(head) - 1
            full = next(((n, r) for n, r in rows if len(r) > k and r[k]), None)
            if full:
                raise BadInputError(f"{path}: column {k + 1} has no name in the header but line {full[0]} fills it "
                                    f"({full[1][k]!r}); name it or remove it")
            head.pop()
            rows = [(n, r[:k] if len(r) > k else r) for n, r in rows]
        known = [h.lower() for h in head] if header_required else known
        # a trailing comma on the data lines only: empty fields past the header are no data
        rows = [(n, r[:len(head)] if len(r) > len(head) and not any(r[len(head):]) else r) for n, r in rows]
    for n, r in rows:
        if is_header(r):
            raise BadInputError(f"{path}: line {n} repeats the header row ({','.join(r)}): two files joined? "
                                f"remove the line")
    return head, rows


def raw_path(name: object, where: str, folder: str = "the image folder") -> str:
    """A file name from an annotation -> the path relative to its folder, as one rule for every
    builder: '\\' is '/', './' and empty parts dropped; absolute, drive or '..' refused."""
    if not isinstance(name, str) or not name.strip():
        raise BadInputError(f"{where}: file name {name!r} is empty or not text")
    unified = name.replace("\\", "/")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified) or ".." in parts or not parts:
        raise BadInputError(f"{where}: path {name!r} leaves {folder} (absolute, a drive or '..'); "
                            f"it must be relative to {folder}")
    return "/".join(parts)


def present_files(folder: Path, names: Iterable[str]) -> set[str]:
    """Which `names` (relative to `folder`) are regular files: one scandir for those directly in it,
    a stat only for those in sub-folders."""
    names = list(names)
    flat: set[str] = set()
    try:
        with os.scandir(folder) as it:
            flat = {e.name for e in it if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {n for n in names if (n in flat if "/" not in n else (Path(folder) / n).is_file())}


def near_miss(folder: Path, name: str) -> str | None:
    """A file in `folder` whose name differs from `name` only in case (a.JPG for a.jpg), for the error."""
    parent = (Path(folder) / name).parent
    low = Path(name).name.lower()
    try:
        with os.scandir(parent) as it:
            return next((str(Path(name).parent / e.name).removeprefix("./") for e in it if e.name.lower() == low
                         and e.name != Path(name).name), None)
    except (FileNotFoundError, NotADirectoryError):
        return None


def refuse_duplicates(items: Iterable[tuple[str, str]], what: str) -> None:
    """`items`: (value, where it was read); the first value read twice is refused with both places."""
    first: dict[str, str] = {}
    for value, where in items:
        if value in first:
            raise BadInputError(f"{where}: {what} {value!r} is also in {first[value]}; keep one of them")
        first[value] = where
