"""Remote reads that survive a dropped connection: a bounded number of tries, with backoff (tenacity).

Only transient failures are retried, and they are listed by type (`transient_types()`), as each
store raises them through fsspec:

- http(s) (fsspec's HTTPFileSystem over aiohttp): `aiohttp.ClientConnectionError` (refused,
  reset, `ServerDisconnectedError`, aiohttp's connect and socket-read timeouts),
  `aiohttp.ClientPayloadError` (a body cut short), and `aiohttp.ClientResponseError` whose status
  is in `TRANSIENT_STATUS` (408, 425, 429, 500, 502, 503, 504), raised by fsspec's
  `raise_for_status`; fsspec's `info` wraps all of these in `FileNotFoundError(url) from exc`,
  so the cause is looked at (a real 404 has a 404 behind it and is not retried);
- timeouts: `TimeoutError` (= `asyncio.TimeoutError`), fsspec's `FSTimeoutError` (one of them),
  and timeouts.StalledError (a `ConnectionError`: a server that stopped sending);
- `ConnectionError` (refused, reset, aborted, broken pipe), `asyncio.IncompleteReadError` and
  `http.client.IncompleteRead` (a stream that ended early);
- s3 (s3fs over aiobotocore), when botocore is importable: `EndpointConnectionError`,
  `ConnectTimeoutError`, `ReadTimeoutError`, `ConnectionClosedError`, `ResponseStreamingError`,
  `IncompleteReadError`. S3's 5xx and throttling answers are retried by botocore itself before
  s3fs raises, so they are not listed again;
- `Corrupted`: bytes that arrived but do not match their size or sha256.

Anything else (a missing file, a refused credential, a 403, mlrpl's own verdict on the data) is
raised at once; after the last try the last failure is raised as it was, for the caller to name
its URL and the number of tries. MLRPL_RETRIES (default 5 tries) and MLRPL_RETRY_DELAY (default
0.5 s, doubled each time) tune it.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, TypeVar

from .errors import MlrplError

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})  # timeout, too early, too many, server errors


class Corrupted(Exception):
    """Bytes that arrived but do not match their checksum (retried: the next read may be whole)."""


@functools.cache
def transient_types() -> tuple[type[BaseException], ...]:
    """The exception types worth another try (the list in the module's docstring)."""
    import asyncio
    import http.client

    import aiohttp
    from fsspec.exceptions import FSTimeoutError

    types: list[type[BaseException]] = [
        Corrupted, ConnectionError, TimeoutError, asyncio.TimeoutError, FSTimeoutError, asyncio.IncompleteReadError,
        http.client.IncompleteRead, aiohttp.ClientConnectionError, aiohttp.ServerDisconnectedError,
        aiohttp.ClientPayloadError]
    try:
        from botocore import exceptions as boto
    except ImportError:  # s3fs not installed: no s3:// reads to retry
        pass
    else:
        types += [boto.EndpointConnectionError, boto.ConnectTimeoutError, boto.ReadTimeoutError,
                  boto.ConnectionClosedError, boto.ResponseStreamingError, boto.IncompleteReadError]
    return tuple(types)


def attempts() -> int:
    return max(1, int(os.environ.get("MLRPL_RETRIES", "5")))


def _first_delay() -> float:
    return float(os.environ.get("MLRPL_RETRY_DELAY", "0.5"))


def delay(attempt: int) -> float:
    """Seconds to wait after failed try `attempt` (0-based): MLRPL_RETRY_DELAY doubled each time."""
    return _first_delay() * 2**attempt


def transient_cause(e: BaseException) -> BaseException | None:
    """The transient failure in `e`'s chain (itself, what it was raised from, or what it was raised
    while handling), or None. mlrpl's own errors (its verdicts on the data) end the search."""
    import aiohttp

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, MlrplError):
            return None
        if isinstance(e, aiohttp.ClientResponseError):
            return e if e.status in TRANSIENT_STATUS else None
        if isinstance(e, transient_types()):
            return e
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


def is_transient(e: BaseException) -> bool:
    """Worth another try: a network failure or a short or corrupted body, not a missing file."""
    return transient_cause(e) is not None


def read_again(e: BaseException, attempt: int, tries: int, cut_short: bool = False) -> bool:
    """Whether a failed read of a remote file is worth another try: tries left, not mlrpl's own
    verdict on the data, and a transient failure or a stream that ended before the file did
    (for a loop that resumes a stream itself, waiting `delay(attempt)` between tries)."""
    return attempt < tries - 1 and not isinstance(e, MlrplError) and (cut_short or is_transient(e))


def with_retries(read: Callable[[], T], tries: int | None = None,
                 also: Callable[[BaseException], bool] = lambda e: False) -> T:
    """`read()`, tried up to `tries` times (default MLRPL_RETRIES) while it fails in a transient way
    (or as `also` says is worth another try, e.g. a stream cut short); the last failure is raised
    as it was."""
    import tenacity

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts() if tries is None else max(1, tries)),
        wait=tenacity.wait_exponential(multiplier=_first_delay(), exp_base=2),  # = delay(i) after try i
        retry=tenacity.retry_if_exception(lambda e: not isinstance(e, MlrplError) and (is_transient(e) or also(e))),
        reraise=True,
    )(read)
