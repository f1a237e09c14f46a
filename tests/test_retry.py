"""Which remote failures are retried (retry.transient_types and the http statuses), how many times,
and that a pull names the number of tries; a failure that is not transient is tried once."""

import asyncio
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest

from mlrpl_data import retry
from mlrpl_data.errors import BadInputError
from mlrpl_data.masks import MaskConfig, make_masks
from mlrpl_data.pull import PullConfig, PullError, pull
from mlrpl_data.readers import RemoteAccessError, file_size
from mlrpl_data.shards import ShardConfig, write_shards

from conftest import ServedFolder
from test_shards import CFG, dataset


@pytest.fixture(autouse=True)
def three_quick_tries(monkeypatch):
    monkeypatch.setenv("MLRPL_RETRIES", "3")
    monkeypatch.setenv("MLRPL_RETRY_DELAY", "0.001")


def response_error(status: int) -> aiohttp.ClientResponseError:
    return aiohttp.ClientResponseError(None, (), status=status, message="x")


def calls_until_given_up(error: BaseException) -> int:
    """How many times with_retries calls a read that always raises `error` (which it must re-raise)."""
    n = [0]

    def read():
        n[0] += 1
        raise error

    with pytest.raises(type(error)) as e:
        retry.with_retries(read)
    assert e.value is error  # the last failure, as it was
    return n[0]


def wrapped(cause: BaseException) -> FileNotFoundError:
    """What fsspec's http `info` raises for any failed HEAD and GET: FileNotFoundError(url) from the cause."""
    try:
        raise FileNotFoundError("http://h/x") from cause
    except FileNotFoundError as e:
        return e


@pytest.mark.parametrize("error", [
    aiohttp.ServerDisconnectedError(), aiohttp.ClientPayloadError("cut"), ConnectionResetError(), TimeoutError(),
    asyncio.IncompleteReadError(b"ab", 5), retry.Corrupted("sha256"), response_error(503), response_error(429),
    wrapped(ConnectionRefusedError()), wrapped(response_error(502))], ids=type)
def test_a_transient_failure_is_tried_mlrpl_retries_times(error):
    assert calls_until_given_up(error) == 3


@pytest.mark.parametrize("error", [
    ValueError("The HTTP server doesn't appear to support range requests"), PermissionError(), response_error(403),
    response_error(404), wrapped(response_error(404)), FileNotFoundError("x"), BadInputError("ours: a verdict")],
    ids=type)
def test_a_failure_that_is_not_transient_is_tried_once(error):
    assert calls_until_given_up(error) == 1


def test_the_chain_is_read_but_a_suppressed_context_is_not():
    try:
        try:
            raise ConnectionResetError()
        except ConnectionResetError:
            raise KeyError("k") from None  # `from None`: the reset is not why
    except KeyError as e:
        assert not retry.is_transient(e)
        assert retry.is_transient(wrapped(e.__context__))


def test_a_cut_stream_is_tried_again_only_when_the_caller_says_so():
    n = [0]

    def read():
        n[0] += 1
        if n[0] < 3:
            raise EOFError("short")
        return "whole"

    assert retry.with_retries(read, also=lambda e: isinstance(e, EOFError)) == "whole" and n[0] == 3
    n[0] = 0
    with pytest.raises(EOFError):
        retry.with_retries(read)
    assert n[0] == 1


class Answering(ServedFolder):
    """http on 127.0.0.1 serving `folder`, but GETs of paths ending in `name` are answered `status`
    (HEAD too if `head`; else normally, so the size is known and the body's GET is what fails); counts the GETs."""

    def __init__(self, folder: Path, name: str, status: int, head: bool = False):
        self.gets = 0
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                if head and self.path.endswith(name):
                    return self.send_error(status)
                return super().do_HEAD()

            def do_GET(self):
                if not self.path.endswith(name):
                    return super().do_GET()
                outer.gets += 1
                self.send_error(status)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Handler(*a, directory=str(folder)))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    d = dataset(tmp_path_factory.mktemp("retry"))
    make_masks(d, MaskConfig(proportions=[0.5], seed=0))
    write_shards(d, ShardConfig(**CFG))
    return d


def test_a_503_is_retried_and_the_pull_names_the_tries(published, tmp_path):
    with Answering(published.parent, "train-000001.tar", 503) as srv:
        url = f"{srv.url}/{published.name}"
        with pytest.raises(PullError, match=r"^" + f"{url}/shards/train-000001.tar" +
                           r": could not be fetched whole after 3 tries \(ClientResponseError: 503"):
            pull(url, tmp_path / "b", PullConfig(progress=False, jobs=1))
    assert srv.gets == 3


def test_a_403_is_tried_once_and_named(published, tmp_path):
    with Answering(published.parent, "train-000001.tar", 403) as srv:
        url = f"{srv.url}/{published.name}"
        with pytest.raises(PullError, match=r"train-000001\.tar: could not be fetched whole \(ClientResponseError: 403"):
            pull(url, tmp_path / "b", PullConfig(progress=False, jobs=1))
    assert srv.gets == 1


def test_file_size_names_a_refusal_and_an_unreachable_server(published):
    with Answering(published.parent, "dataset.json", 403) as srv:  # HEAD answers: the size is read without a GET
        assert file_size(f"{srv.url}/{published.name}/dataset.json") == (published / "dataset.json").stat().st_size
        assert srv.gets == 0
    with Answering(published.parent, "dataset.json", 403, head=True) as srv:
        with pytest.raises(RemoteAccessError, match=r"dataset\.json: the server refused it \(403 Forbidden\)$"):
            file_size(f"{srv.url}/{published.name}/dataset.json")
        assert srv.gets == 1  # fsspec asks with GET after HEAD, once: a refusal is not retried
    with pytest.raises(RemoteAccessError, match=r"^http://127\.0\.0\.1:9/x: cannot reach the server after 3 tries \("):
        file_size("http://127.0.0.1:9/x")
