"""The one output-path guard: every path a command will write is checked here, before any work.

A command lists its outputs (``-o``, ``--report``, ``--json``, statistics, scales files, the external-data file next
to an output model, output folders) and its inputs (the model file, its external-data files, data, scales, config
and statistics files). :func:`check_outputs` refuses, with one line naming the flag:

* an empty path (``-o ""``), a path whose parent is missing, is not a folder, or cannot be written;
* a file name longer than the file system allows;
* an existing directory, FIFO, device or socket where a file is to be written (renaming over ``/dev/null`` would
  replace the device node), or an existing non-folder where a folder is to be written;
* any output that is, or resolves (symlinks, ``..``, hard links via ``samefile``) to, one of the inputs;
* two outputs that are the same file.

No onnxq imports besides errors: commands collect the paths (e.g. :func:`onnxq.graph.model_files`) and call this.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from onnxq.errors import OnnxqError


@dataclass(frozen=True)
class Output:
    """One path a command will write: ``flag`` names it in messages; ``folder`` for a directory output."""

    flag: str
    path: str | os.PathLike | None
    folder: bool = False


def _same(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _probe_writable(folder: Path, flag: str) -> None:
    """Really create and remove a file: ``os.access`` is wrong for root and for read-only mounts."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".onnxq-probe-", dir=folder)
    except OSError as exc:
        why = "it is read-only" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else exc.strerror
        raise OnnxqError(f"{flag}: cannot write into folder {folder}: {why}; choose a writable folder") from exc
    os.close(fd)
    os.unlink(probe)


def check_output(output: Output) -> Path:
    """Checks of one output path on its own; returns it as a Path."""
    flag = output.flag
    if output.path is None or not str(output.path).strip():
        raise OnnxqError(f"{flag}: the output path is empty; give a file name")
    path = Path(output.path)
    if path.name in ("", ".", ".."):
        raise OnnxqError(f"{flag}: {path} names a folder, not a file")
    folder = path.parent if str(path.parent) else Path(".")
    if len(os.fsencode(path.name)) > _name_max(folder if folder.is_dir() else Path(".")):
        raise OnnxqError(f"{flag}: the file name is too long ({len(os.fsencode(path.name))} bytes); shorten it")
    if output.folder:  # created with its parents: the nearest existing ancestor must be a writable folder
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
    if not folder.exists():
        raise OnnxqError(f"{flag}: output folder does not exist: {folder}; create it first")
    if not folder.is_dir():
        raise OnnxqError(f"{flag}: {folder} is not a folder, so {path} cannot be written")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OnnxqError(f"{flag}: cannot use {path}: {exc.strerror}") from exc
    if st is not None:
        if output.folder and not stat.S_ISDIR(st.st_mode):
            raise OnnxqError(f"{flag}: {path} exists and is not a folder")
        if not output.folder and stat.S_ISDIR(st.st_mode):
            raise OnnxqError(f"{flag}: {path} is a directory; give a file path")
        if not output.folder and not stat.S_ISREG(st.st_mode):
            raise OnnxqError(f"{flag}: {path} exists and is not a regular file (a device, FIFO or socket); "
                             "choose another path")
    _probe_writable(path if output.folder and st is not None else folder, flag)
    return path


def check_outputs(outputs: list[Output], inputs: Mapping[str, Iterable[str | os.PathLike | None]]) -> list[Path]:
    """Check every output of a command against the file system, the inputs and each other (see module doc).

    ``inputs`` maps a description ("the input model", "--scales") to the files read under it."""
    checked = [(o, check_output(o)) for o in outputs]
    for output, path in checked:
        for what, sources in inputs.items():
            for source in sources:
                if source is not None and str(source) and _same(path, Path(source)):
                    raise OnnxqError(f"{output.flag}: refusing to overwrite {what} {source}; choose another "
                                     "output path")
    for i, (a, pa) in enumerate(checked):
        for b, pb in checked[i + 1:]:
            if _same(pa, pb):
                raise OnnxqError(f"{a.flag} and {b.flag} name the same file {pa}; give them different paths")
    return [p for _, p in checked]

