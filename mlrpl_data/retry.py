"""Remote reads that survive a dropped connection: a bounded number of tries, with backoff.

Only transient failures are retried (a refused or dropped connection, a timeout, a body cut
short, a checksum that failed in transit); a missing file or a refused credential is not, and
the last failure is raised naming the URL, so no caller hangs. MLRPL_RETRIES (default 5 tries)
and MLRPL_RETRY_DELAY (default 0.5 s, doubled each time) tune it.
"""

from __future__ import annotations

import os
import time
from typing import Callable, TypeVar

from .errors import MlrplError

T = TypeVar("T")

# names of the transient exception types of aiohttp (http) and botocore (s3), which are not OSErrors
_TRANSIENT_NAMES = ("Disconnected", "Payload", "Timeout", "Connection", "ClientOSError", "ClientResponseError",
                    "IncompleteRead", "ChecksumMismatch")


class Corrupted(Exception):
    """Bytes that arrived but do not match their checksum (retried: the next read may be whole)."""


def attempts() -> int:
    return max(1, int(os.environ.get("MLRPL_RETRIES", "5")))


def delay(attempt: int) -> float:
    return float(os.environ.get("MLRPL_RETRY_DELAY", "0.5")) * 2**attempt


def is_transient(e: BaseException) -> bool:
    """Worth another try: a network failure or a short or corrupted body, not a missing file."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, Corrupted):
            return True
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            e = e.__cause__ or e.__context__  # fsspec reports a refused connection as "not found": look behind
            continue
        if isinstance(e, (ConnectionError, TimeoutError)):
            return True
        if any(n in type(e).__name__ for n in _TRANSIENT_NAMES):
            return True
        if type(e) is OSError and e.errno is None:  # a bare OSError from a stream cut short
            return True
        e = e.__cause__ or e.__context__
    return False


def read_again(e: BaseException, attempt: int, tries: int, cut_short: bool = False) -> bool:
    """Whether a failed read of a remote file is worth another try: tries left, not mlrpl's own
    verdict on the data, and a transient failure or a stream that ended before the file did."""
    return attempt < tries - 1 and not isinstance(e, MlrplError) and (cut_short or is_transient(e))


def with_retries(read: Callable[[], T], on_retry: Callable[[int, BaseException], None] | None = None) -> T:
    """`read()`, tried again after a transient failure; the last failure is raised as it was."""
    n = attempts()
    for i in range(n):
        try:
            return read()
        except Exception as e:
            if i == n - 1 or not is_transient(e):
                raise
            if on_retry:
                on_retry(i + 1, e)
            time.sleep(delay(i))
    raise AssertionError("unreachable")
