"""Atomic writes and checksums: an output is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .errors import BadInputError

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def temp_name(path: Path, keep_suffix: bool = False) -> Path:
    """The temporary sibling a write goes to before its rename (swept when its process is gone);
    `keep_suffix` for writers that check it (torch.export wants .pt2)."""
    path = Path(path)
    if keep_suffix and path.suffix:
        return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e`: torch wraps a failed write (a full disk) in a RuntimeError."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


class _Sink(io.IOBase):
    """A file that remembers its first failed write and accepts (drops) the rest: a native writer
    (torch's zip writer) that sees a write fail throws again from its destructor, which aborts the
    process; it finishes instead, and the failure is raised after it. An io.IOBase, so writers that
    check for a file object (torch.export.save) take it as one."""

    def __init__(self, f: BinaryIO):
        super().__init__()
        self.f, self.error = f, None

    def write(self, data) -> int:
        if self.error is None:
            try:
                return self.f.write(data)
            except OSError as e:
                self.error = e
        return len(memoryview(data))

    def flush(self) -> None:
        if self.error is None and not self.f.closed:
            self.f.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.f.seekable()

    def seek(self, *args) -> int:
        return self.f.seek(*args)

    def tell(self) -> int:
        return self.f.tell()

    def truncate(self, *args) -> int:
        return self.f.truncate(*args)

    def fileno(self) -> int:
        return self.f.fileno()

    def close(self) -> None:
        pass  # the file is the caller's to close (atomic_write_with's with-block)

    def __getattr__(self, name):
        return getattr(self.f, name)


@contextlib.contextmanager
def atomic_path(path: Path, keep_suffix: bool = False) -> Iterator[Path]:
    """The one temp-then-rename: yields the temporary sibling of `path` (temp_name) to write, and renames
    it over `path` when the block ends normally. An exception (a full disk, Ctrl-C, a failed check)
    removes the temporary and the folders this call made, and leaves the old `path` as it was; a
    process killed outright leaves only the temporary, which ownership.sweep_stale removes later."""
    path = Path(path)
    made = make_parents(path)
    tmp = temp_name(path, keep_suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        remove_empty(made)
        raise


def atomic_write_with(path: Path, write: Callable[[BinaryIO], None], fsync: bool = True, seal: bool = False,
                      keep_suffix: bool = False) -> None:
    """`write(f)` into a temporary sibling, fsync, seal (a zip: see seal_zip), then rename over `path`.
    A failure (a full disk, a kill) leaves the old `path` as it was and no temporary; a full disk is
    raised as OSError ENOSPC even where the writer (torch) wrapped it."""
    path = Path(path)
    try:
        with atomic_path(path, keep_suffix) as tmp:
            with open(tmp, "wb") as f:
                sink = _Sink(f)
                write(sink)
                if sink.error is not None:
                    raise sink.error
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
            if seal:
                seal_zip(tmp)
    except BaseException as e:
        cause = _os_error(e) if isinstance(e, Exception) else None
        if cause is not None and (cause is not e or not cause.filename):  # name the file the user asked for
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from None
        raise


def make_parents(path: Path) -> list[Path]:
    """Create the missing folders above `path`; returns those made, deepest first (for remove_empty)."""
    missing = [p for p in Path(path).parents if not p.exists()]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed write made (deepest first) where they are still empty: a write that
    failed on a full disk leaves no empty masks/ or run folder behind."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            break


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write to a temporary sibling, fsync (unless told the caller verifies later), then rename over `path`."""
    atomic_write_with(path, lambda f: f.write(data), fsync=fsync)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: Path, dst: Path) -> None:
    """A copy that is whole or absent (a plain copy on a full disk leaves a truncated file)."""
    with open(src, "rb") as s:
        atomic_write_with(dst, lambda f: shutil.copyfileobj(s, f, CHUNK))


# ---- sealed zips: a sha256 in the archive comment ------------------------------------------------------------
# torch.save, torch.jit.save and torch.export.save write zip archives whose readers skip the archive
# comment; torch does not check the zip CRCs, so a flipped bit would load as different weights.

SEAL_PREFIX = b"mlrpl-sha256:"
SEAL_LEN = len(SEAL_PREFIX) + 64
_EOCD = b"PK\x05\x06"  # the end-of-central-directory record: 22 bytes, the comment length last


def seal_zip(path: Path) -> None:
    """Write the sha256 of the archive (as it was, comment empty) into its comment."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size - 22)
        if f.read(22)[:4] != _EOCD:
            raise ValueError(f"{path}: not a zip archive ending in a comment-free directory")
        digest = sha256_file(path)
        f.seek(size - 2)
        f.write(SEAL_LEN.to_bytes(2, "little") + SEAL_PREFIX + digest.encode())
        f.flush()
        os.fsync(f.fileno())


def is_sealed(path: Path) -> bool:
    """Whether the file ends in an mlrpl seal (not whether the seal still matches)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size < 22 + SEAL_LEN:
                return False
            f.seek(size - SEAL_LEN)
            return f.read(len(SEAL_PREFIX)) == SEAL_PREFIX
    except OSError:
        return False


def check_sealed(path: Path, what: str = "file", fix: str = "use another copy") -> bool:
    """Check a zip model file before it is read: a sealed one against its sha256, an unsealed one
    (an older mlrpl, or a file made elsewhere) against its zip CRCs. True when sealed; a damaged
    file raises one line naming it."""
    path = Path(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - 22 - SEAL_LEN))
        tail = f.read()
    sealed = size >= 22 + SEAL_LEN and tail[:4] == _EOCD and tail[20:22] == SEAL_LEN.to_bytes(2, "little")
    if sealed and tail[22:22 + len(SEAL_PREFIX)] == SEAL_PREFIX:
        want = tail[22 + len(SEAL_PREFIX):].decode("ascii", "replace")
        if _digest_unsealed(path, size) != want:
            raise BadInputError(f"{path}: {what} is corrupt (its content no longer matches the sha256 mlrpl wrote "
                                f"into it: damaged on disk or in a copy); {fix}")
        return True
    if size >= 22 and tail[-22:-18] == _EOCD and tail[-2:] == b"\0\0":
        _check_crcs(path, what, fix)
        return False
    raise BadInputError(f"{path}: {what} is corrupt or not a file mlrpl wrote (its zip directory or seal is damaged); "
                        f"{fix}")


def _digest_unsealed(path: Path, size: int) -> str:
    """sha256 of the archive as it was before seal_zip: without the comment, its length back to 0."""
    h = hashlib.sha256()
    left = size - SEAL_LEN - 2
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    h.update(b"\0\0")
    return h.hexdigest()


def _check_crcs(path: Path, what: str, fix: str) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise BadInputError(f"{path}: {what} is corrupt ({e}); {fix}") from None
    if bad is not None:
        raise BadInputError(f"{path}: {what} is corrupt (the CRC of its member {bad} fails); {fix}")


def staging_dir(target: Path) -> Path:
    """A fresh temporary directory beside `target` (same filesystem, so rename is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.building-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def publish_dir(staged: Path, target: Path) -> None:
    """Move a fully written `staged` directory to `target`, replacing what was there."""
    staged, target = Path(staged), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, target)
