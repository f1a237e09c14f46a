"""Every remote read is bounded in time: no server can hold a command forever.

MLRPL_TIMEOUT (seconds, default 30) bounds the connection and is the interval in which a read must
receive at least MLRPL_MIN_BYTES (default 1024) once a response has started: a server that sends its
headers and then nothing, or a byte every 2 s, fails the read (StalledError), which retry.py
retries like any transient failure, and the last one is reported naming the URL. The rule works as
curl's --speed-limit/--speed-time, on every http(s) response body (fsspec reads through aiohttp);
s3:// gets botocore's connect and read timeouts.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from .errors import BadInputError


def _number(name: str, default: float) -> float:
    text = os.environ.get(name, "")
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1
    if not value > 0:
        raise BadInputError(f"{name}={text!r}: must be a positive number (default {default:g})")
    return value


def timeout() -> float:
    return _number("MLRPL_TIMEOUT", 30.0)


def min_bytes() -> int:
    return int(_number("MLRPL_MIN_BYTES", 1024))


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options that bound a remote filesystem's reads in time (none for local paths)."""
    protocol = str(url).split("://", 1)[0].lower() if "://" in str(url) else "file"
    t, _ = timeout(), min_bytes()  # both checked before anything is read
    if protocol in ("http", "https"):
        import aiohttp

        return {"get_client": _client, "client_kwargs": {
            "timeout": aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=2 * t)}}  # bodies: Paced
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": t, "read_timeout": t}}
    return {}


async def _client(**kwargs):
    import aiohttp

    return aiohttp.ClientSession(response_class=_response_class(), **kwargs)


_CLASS = None


def _response_class():
    """aiohttp's response, its body read through a Paced stream (made once, on first use)."""
    global _CLASS
    if _CLASS is None:
        import aiohttp

        class PacedResponse(aiohttp.ClientResponse):
            async def start(self, connection):
                await super().start(connection)
                self.content = Paced(self.content, str(self.url))
                return self

        _CLASS = PacedResponse
    return _CLASS


class StalledError(ConnectionError):
    """Too few bytes in the interval (a ConnectionError: retried; not asyncio's TimeoutError, which
    fsspec replaces by an FSTimeoutError without its message)."""


class Paced:
    """A response body stream that must deliver `min_bytes()` in every `timeout()` seconds."""

    def __init__(self, inner, url: str):
        self._inner, self._url = inner, url
        self._interval, self._need = timeout(), min_bytes()
        self._waited, self._got = 0.0, 0  # only time spent waiting on the server counts, not the reader's pauses

    def __getattr__(self, name):
        return getattr(self._inner, name)

    async def _paced(self, coro) -> bytes:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            data = await asyncio.wait_for(coro, timeout=max(self._interval - self._waited, 0.001))
        except asyncio.TimeoutError:
            raise StalledError(f"{self._url}: fewer than {self._need:,} bytes in {self._interval:g} s (a stalled "
                               f"server; MLRPL_TIMEOUT, MLRPL_MIN_BYTES)") from None
        self._waited += loop.time() - t0
        self._got += len(data)
        if self._got >= self._need:
            self._waited, self._got = 0.0, 0
        return data

    async def readany(self) -> bytes:
        return await self._paced(self._inner.readany())

    async def read(self, n: int = -1) -> bytes:
        if n >= 0:
            return await self._paced(self._inner.read(n))
        parts = []
        while chunk := await self._paced(self._inner.readany()):
            parts.append(chunk)
        return b"".join(parts)

    async def readexactly(self, n: int) -> bytes:
        parts, left = [], n
        while left > 0:
            chunk = await self._paced(self._inner.read(left))
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def iter_chunked(self, n: int):
        async def chunks():
            while chunk := await self.read(n):
                yield chunk
        return chunks()

    def iter_any(self):
        async def chunks():
            while chunk := await self.readany():
                yield chunk
        return chunks()


def describe(e: BaseException) -> str:
    """`Type: message` of a failed remote read; a bare timeout says which limit it hit."""
    while not str(e).strip() and (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__  # fsspec's FSTimeoutError holds the timeout that says more
    text = str(e).strip()
    if not text and ("Timeout" in type(e).__name__ or isinstance(e, TimeoutError)):
        text = f"no answer within MLRPL_TIMEOUT = {timeout():g} s"
    return f"{type(e).__name__}: {text}"
