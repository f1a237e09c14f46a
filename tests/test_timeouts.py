"""Every remote read is bounded in time (MLRPL_TIMEOUT, MLRPL_MIN_BYTES): a server that sends its
headers and then nothing, one that trickles a byte at a time, and one that never answers, each end
pull, verify and the training loader with one line naming the URL, within seconds here."""

import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlrpl.cli import app
from mlrpl_data.errors import BadInputError
from mlrpl_data.masks import MaskConfig, make_masks
from mlrpl_data.pull import PullConfig, PullError, pull
from mlrpl_data.shards import ShardConfig, write_shards
from mlrpl_train.loader import ShardReadError, read_samples

from conftest import ServedFolder
from test_shards import dataset


class Stalling(ServedFolder):
    """http on 127.0.0.1 serving `folder`; a GET of a path ending in `stall` sends the status and headers
    (full Content-Length), then `mode`: "nothing" (silence) or "trickle" (one byte every `gap` s)."""

    def __init__(self, folder: Path, stall: str, mode: str, gap: float = 0.4):
        stop = self.stop = threading.Event()

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if not self.path.endswith(stall):
                    return super().do_GET()
                f = self.send_head()
                if f is None:
                    return
                with f:
                    data = f.read()
                try:
                    for i in range(len(data)):
                        if stop.wait(gap if mode == "trickle" else 30):
                            break
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                except OSError:
                    pass  # the client gave up: as it should
                self.close_connection = True

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Handler(*a, directory=str(folder)))
        self.srv.daemon_threads = True

    def __exit__(self, *exc):
        self.stop.set()  # a stalled answer ends now, or shutdown would wait for it
        super().__exit__(*exc)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    d = dataset(tmp_path_factory.mktemp("stall"))
    make_masks(d, MaskConfig(proportions=[0.5], seed=0))
    write_shards(d, ShardConfig(max_samples=5, shard_size=None, progress=False, split="all"))
    return d


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch):
    monkeypatch.setenv("MLRPL_TIMEOUT", "1")
    monkeypatch.setenv("MLRPL_RETRIES", "2")
    monkeypatch.setenv("MLRPL_RETRY_DELAY", "0.01")


@pytest.mark.parametrize("mode", ["nothing", "trickle"])
@pytest.mark.fuzzclass("stalled servers")
def test_pull_from_a_stalling_server_ends_naming_the_file(published, tmp_path, mode):
    with Stalling(published.parent, "train-000002.tar", mode) as srv:
        url = f"{srv.url}/{published.name}"
        t = time.perf_counter()
        with pytest.raises(PullError) as e:
            pull(url, tmp_path / "b", PullConfig(progress=False, jobs=1))
        took = time.perf_counter() - t
    assert str(e.value).startswith(f"{url}/shards/train-000002.tar: could not be fetched whole after 2 tries (")
    assert "fewer than 1,024 bytes in 1 s" in str(e.value) or "no answer within MLRPL_TIMEOUT = 1 s" in str(e.value)
    assert took < 120  # a guard against waiting forever (two tries of about a second each); the message is the test
    assert [p.name for p in (tmp_path / "b").rglob(".*.tmp-*")] == []
    assert not (tmp_path / "b" / "dataset.json").exists()


@pytest.mark.fuzzclass("stalled servers")
def test_pull_cli_one_line_for_a_trickling_server(published, tmp_path):
    with Stalling(published.parent, "index.json", "trickle") as srv:
        url = f"{srv.url}/{published.name}"
        r = CliRunner().invoke(app, ["pull", url, str(tmp_path / "b"), "--no-progress"])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {url}/shards/index.json: ") and "Traceback" not in r.output


@pytest.mark.fuzzclass("stalled servers")
def test_training_loader_ends_on_a_stalled_shard(published):
    with Stalling(published.parent, "train-000001.tar", "trickle") as srv:
        url = f"{srv.url}/{published.name}/shards/train-000001.tar"
        t = time.perf_counter()
        with pytest.raises(ShardReadError, match=rf"^{url}: cannot read shard \(.*fewer than 1,024 bytes in 1 s.* after 2 "
                                                 rf"tries$"):
            list(read_samples([url]))
    assert time.perf_counter() - t < 15


@pytest.mark.fuzzclass("stalled servers")
def test_verify_of_a_server_that_never_answers_ends(monkeypatch):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)  # connections are accepted by the kernel, never answered
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/ds"
    try:
        t = time.perf_counter()
        r = CliRunner().invoke(app, ["verify", url, "--no-progress"])
        took = time.perf_counter() - t
    finally:
        sock.close()
    assert r.exit_code == 1 and took < 120  # a guard against waiting forever, generous for a loaded machine
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {url}/dataset.json: cannot reach"), r.output


@pytest.mark.fuzzclass("stalled servers")
def test_a_nonsense_timeout_is_refused_in_one_line(monkeypatch):
    from mlrpl_data.timeouts import storage_options

    monkeypatch.setenv("MLRPL_TIMEOUT", "0")
    with pytest.raises(BadInputError, match=r"^MLRPL_TIMEOUT='0': must be a positive number \(default 30\)$"):
        storage_options("http://127.0.0.1/x")
