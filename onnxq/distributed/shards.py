"""Split calibration data into shards by file, and name a shard's files in messages.

Pure bookkeeping, no Ray: a shard is a run of consecutive files of the sorted folder listing, so each worker streams
its own files by path and the merged statistics equal one run over the folder (the merge is exact and does not depend
on the order, see :mod:`onnxq.calib.histogram`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: A shard's files are listed in full up to this many; longer shards are named by their first and last file.
NAMED_FILES = 4


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    total: int
    files: tuple[str, ...]  # absolute paths, in reading order

    def label(self) -> str:
        """``shard 2/4 (003.npy, 004.npy in /data/calib)``: what a message about this shard says."""
        names = [Path(f).name for f in self.files]
        folder = Path(self.files[0]).parent
        if len(names) <= NAMED_FILES:
            listed = ", ".join(names)
        else:
            listed = f"{len(names)} files {names[0]} .. {names[-1]}"
        return f"shard {self.index + 1}/{self.total} ({listed} in {folder})"


def split_files(files: list[Path], shards: int) -> list[Shard]:
    """``files`` cut into ``min(shards, len(files))`` runs of consecutive files whose sizes differ by at most one."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    count = min(shards, len(files))
    base, extra = divmod(len(files), count)
    result: list[Shard] = []
    start = 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        result.append(Shard(i, count, tuple(str(Path(f).resolve()) for f in files[start:start + size])))
        start += size
    return result
