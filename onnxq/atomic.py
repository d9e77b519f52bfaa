"""Atomic file writes: a temporary file in the target folder, fsynced, renamed into place, folder fsynced.

* Every temporary file is registered while it exists, and removed when the write fails, when the process ends
  normally, or on SIGTERM (:func:`terminate_cleanly` turns SIGTERM into an exception so ``finally`` blocks run).
* Data reaches the disk before the rename (``fsync`` of the file) and the rename itself is made durable (``fsync`` of
  the folder), so after a power loss the target holds either the old or the new content, never a torn file
  (the rename-after-fsync pattern, see rename(2) and the ext4 ``auto_da_alloc`` notes in ext4(5)).
* The new file's mode follows the umask like any ``open(path, "w")`` would (``mkstemp`` alone gives 0600).
* :class:`AtomicGroup` writes several files that belong together (a model and its external data, a model and its
  report): all temporaries first, then the renames, so a failure before the commit writes nothing at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from onnxq.errors import OnnxqError

_LIVE_TEMPS: set[str] = set()
_LOCK = threading.Lock()


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so cleanup code (``finally``) runs before exit."""


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def new_temp(path: Path, suffix: str = ".tmp") -> str:
    """Create (and register for cleanup) an empty temporary file next to ``path``, with umask-following mode."""
    folder = _folder(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=suffix, dir=folder)
    except FileNotFoundError as exc:
        raise OnnxqError(f"output folder does not exist: {folder}; create it first") from exc
    except OSError as exc:
        raise OnnxqError(f"cannot write into {folder}: {exc.strerror}") from exc
    os.close(fd)
    with _LOCK:
        _LIVE_TEMPS.add(tmp)
    os.chmod(tmp, 0o666 & ~current_umask())
    return tmp


def discard_temp(tmp: str) -> None:
    with _LOCK:
        _LIVE_TEMPS.discard(tmp)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def fsync_file(tmp: str) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: str, path: Path) -> None:
    os.replace(tmp, path)
    with _LOCK:
        _LIVE_TEMPS.discard(tmp)


class AtomicGroup:
    """Files that appear together or not at all::

    with AtomicGroup() as group:
        tmp = group.temp_for(path)          # write it yourself (e.g. onnx.save), or
        group.write_bytes(other, data)
    # on a clean exit: fsync, rename every file into place, fsync the folders; on an exception: remove them all
    """

    def __init__(self) -> None:
        self._pending: list[tuple[str, Path]] = []

    def temp_for(self, path: str | os.PathLike, suffix: str = ".tmp") -> str:
        path = Path(path)
        if path.is_dir():
            raise OnnxqError(f"output path is a directory: {path}")
        tmp = new_temp(path, suffix)
        self._pending.append((tmp, path))
        return tmp

    def write_bytes(self, path: str | os.PathLike, data: bytes) -> Path:
        tmp = self.temp_for(path)
        with open(tmp, "wb") as f:
            f.write(data)
        return Path(path)

    def write_with(self, path: str | os.PathLike, writer: Callable[[str], None], suffix: str = ".tmp") -> Path:
        """``writer(tmp_path)`` fills the temporary file (e.g. ``numpy.savez``)."""
        writer(self.temp_for(path, suffix))
        return Path(path)

    def commit(self) -> None:
        for tmp, _ in self._pending:
            fsync_file(tmp)
        for tmp, path in self._pending:
            _commit(tmp, path)
        for folder in {_folder(path) for _, path in self._pending}:
            fsync_folder(folder)
        self._pending.clear()

    def abort(self) -> None:
        for tmp, _ in self._pending:
            discard_temp(tmp)
        self._pending.clear()

    def __enter__(self) -> AtomicGroup:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            finally:
                self.abort()
        else:
            self.abort()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with AtomicGroup() as group:
        group.write_bytes(path, data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def json_text(payload: object) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"


def write_json_atomic(path: str | os.PathLike, payload: object) -> Path:
    return write_text_atomic(path, json_text(payload))


def remove_live_temps() -> None:
    """Remove every temporary file still registered (called on SIGTERM and at exit)."""
    with _LOCK:
        leftovers = list(_LIVE_TEMPS)
        _LIVE_TEMPS.clear()
    for tmp in leftovers:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _raise_terminated(signum, frame) -> None:
    remove_live_temps()
    raise Terminated(f"terminated by signal {signum}")


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """While active (main thread only), SIGTERM raises :class:`Terminated` after removing temporary files."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        remove_live_temps()
