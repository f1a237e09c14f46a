"""Reading what mlrpl did not just write: local paths or fsspec URLs (http(s)://, s3://, ...).

Every read here is bounded: a local path must be a regular file (never a device, a FIFO or a
directory: `verify` on a shard linked to /dev/zero must end), and a file larger than the limit
of its kind is refused before it is read. Failures name the file and say what is wrong.
Parquet is parsed single-threaded: pyarrow's reader threads can abort the interpreter at exit
("terminate called without an active exception") when a command stops on an error.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

from .errors import BadInputError, MlrplError
from .retry import attempts, transient_cause, with_retries
from .timeouts import describe

MiB = 2**20
JSON_LIMIT = 256 * MiB
PARQUET_LIMIT = 8 * 1024 * MiB


class MissingFileError(BadInputError):
    """A file that is not there."""


class RemoteAccessError(MlrplError):
    """A remote store refused or could not be reached (credentials, network)."""


def join(url: str, *parts: str) -> str:
    return "/".join([str(url).rstrip("/"), *parts])


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_remote(url: str) -> bool:
    """The one rule of "local or URL": a URL starts with an explicit scheme `xxx://` (file:// is local).
    Anything else is a local path, opened as one, never through fsspec: `a::b`, `#`, `?`, `%`,
    `[`, `*` or `s3:` in a folder name are just characters."""
    return bool(_SCHEME.match(str(url))) and not str(url).startswith("file://")


def local_path(url: str) -> str:
    """The file system path of a local location (`file://` stripped)."""
    return str(url).removeprefix("file://")


def _fs(url: str):
    import fsspec

    from .timeouts import storage_options

    return fsspec.core.url_to_fs(str(url), **storage_options(url))  # every remote read bounded in time


def file_size(url: str) -> int:
    """Size in bytes of a regular file (local) or an object (remote, a HEAD request over http).

    Raises MissingFileError when absent (404), BadInputError for a folder, a device or an object of
    unknown size, RemoteAccessError when the store refuses (401, 403, credentials) or cannot be
    reached after MLRPL_RETRIES tries (refused connection, timeout, 5xx, 429)."""
    url = str(url)
    if not is_remote(url):
        path = local_path(url)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise MissingFileError(f"{url}: not found") from None
        except NotADirectoryError:
            raise MissingFileError(f"{url}: not found (a parent is not a folder)") from None
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket"
            raise BadInputError(f"{url}: is {kind}, not a regular file; refusing to read it")
        return st.st_size
    fs, path = _fs(url)
    try:
        info = with_retries(lambda: fs.info(path))
    except FileNotFoundError as e:
        from aiohttp import ClientResponseError

        cause = transient_cause(e)  # fsspec's http store reports every failed HEAD and GET as "not found"
        if cause is not None:
            tries = f" after {attempts()} tries" if attempts() > 1 else ""
            raise RemoteAccessError(f"{url}: cannot reach the server{tries} ({describe(cause)})") from None
        if isinstance(e.__cause__, ClientResponseError) and e.__cause__.status != 404:
            raise RemoteAccessError(f"{url}: the server refused it ({e.__cause__.status} {e.__cause__.message})") from None
        raise MissingFileError(f"{url}: not found") from None
    except Exception as e:  # credentials, DNS, refused connections: each store raises its own types
        raise RemoteAccessError(f"{url}: cannot reach it ({describe(e)})") from None
    if info.get("type") not in ("file", None):
        raise BadInputError(f"{url}: is a {info.get('type')}, not a file")
    size = info.get("size")
    if size is None:
        raise BadInputError(f"{url}: the server does not say its size; refusing an unbounded read")
    return int(size)


def open_binary(url: str):
    """A binary file object (a context manager) reading a local file or a remote object front to back.

    http(s) is one streaming GET (fsspec's HTTPStreamFile, `block_size=0`): no Range request, so
    any static server works, `python -m http.server` included (fsspec's default 5 MiB blocks
    need ranges past the first block: "The HTTP server doesn't appear to support range
    requests"). Object stores (s3://, gs://, ...) always honour Range and read through their own
    buffered file, a ranged GET per block (s3fs: 50 MiB). Call file_size first: it checks the
    kind and the size; this raises FileNotFoundError for a missing object and the store's own
    errors otherwise (retry.is_transient says which are worth another try). Seeking back is not
    possible on a stream: read it in order.
    """
    if not is_remote(url):
        return open(local_path(url), "rb")
    fs, path = _fs(url)
    if "http" in fs.protocol:  # fsspec's HTTPFileSystem.protocol is ("http", "https")
        return fs.open(path, "rb", block_size=0)
    return fs.open(path, "rb")


def read_bytes(url: str, limit: int) -> bytes:
    """The whole file, at most `limit` bytes (a larger one is refused, not truncated)."""
    size = file_size(url)
    if size > limit:
        raise BadInputError(f"{url}: {size:,} bytes, more than the {limit:,} such a file may hold")
    if not is_remote(url):
        with open(local_path(url), "rb") as f:
            data = f.read(limit + 1)
    else:
        fs, path = _fs(url)
        try:
            data = with_retries(lambda: fs.cat_file(path))
        except FileNotFoundError:
            raise MissingFileError(f"{url}: not found") from None
        except Exception as e:
            raise RemoteAccessError(f"{url}: read failed ({describe(e)})") from None
    if len(data) > limit:
        raise BadInputError(f"{url}: grew past {limit:,} bytes while being read")
    return data


def read_json(url: str, limit: int = JSON_LIMIT) -> Any:
    """Parsed JSON; malformed text names the file, line and column."""
    from .jsonio import parse_json

    return parse_json(read_bytes(url, limit), url)


def read_json_object(url: str, required: dict[str, type | tuple[type, ...]], limit: int = JSON_LIMIT) -> dict[str, Any]:
    """A JSON object holding at least `required` keys of the given types (else BadInputError with the fix)."""
    doc = read_json(url, limit)
    check_fields(doc, required, url)
    return doc


def check_fields(doc: Any, required: dict[str, type | tuple[type, ...]], where: str) -> None:
    if not isinstance(doc, dict):
        raise BadInputError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    for key, kind in required.items():
        if key not in doc:
            raise BadInputError(f"{where}: lacks the field {key!r} (not a file mlrpl wrote, or an older version)")
        value = doc[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            want = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise BadInputError(f"{where}: field {key!r} must be {want}, got {type(value).__name__} {str(value)[:40]!r}")


def arrow_owned(data: bytes):
    """`data` copied into memory Arrow owns. A reader over Python bytes is released in one of Arrow's
    threads, which then needs the GIL: at interpreter exit that thread is ended inside a C++
    destructor and the process aborts ("terminate called without an active exception", exit 134)."""
    import numpy as np
    import pyarrow as pa

    buf = pa.allocate_buffer(len(data))
    np.frombuffer(buf, np.uint8)[:] = np.frombuffer(data, np.uint8)
    return buf


def read_parquet(url: str, columns: dict[str, str], limit: int = PARQUET_LIMIT):
    """A Parquet table with at least `columns` ({name: arrow type as text, e.g. 'string',
    'list<item: int8>'}); a truncated or foreign file names itself and the fix."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = read_bytes(url, limit)
    try:
        table = pq.read_table(pa.BufferReader(arrow_owned(data)), use_threads=False)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise BadInputError(f"{url}: not a readable Parquet file (truncated or corrupt: {e}); rebuild it") from None
    for name, kind in columns.items():
        if name not in table.column_names:
            raise BadInputError(f"{url}: lacks the column {name!r} (has {', '.join(table.column_names)})")
        got = str(table.schema.field(name).type)
        if got.replace("element", "item") != kind:
            raise BadInputError(f"{url}: column {name!r} is {got}, expected {kind}")
    return table
