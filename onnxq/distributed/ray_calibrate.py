"""Calibration statistics of a data folder computed on a Ray cluster, one task per shard of files, merged exactly.

How a run goes:

1. the driver lists the data files (a folder's ``.npy``/``.npz`` batches, sorted by name, or one ``.npz`` stack) and
   cuts them into shards of consecutive files (:mod:`onnxq.distributed.shards`);
2. one Ray task per shard (:func:`calibrate_shard`) loads the model *by path*, prepares it with the same passes and
   settings, checks that it got the driver's model (file digest, prepared-graph fingerprint, onnxq version), and
   streams its own files *by path* into one calibrator per planned activation -- no data goes through the driver;
3. the driver folds each shard's calibrators into the result as they arrive
   (:func:`onnxq.calib.stats.merge_into`). Every method's statistics merge exactly and in any order (min/max, and
   integer histogram counts on a power-of-two grid, see :mod:`onnxq.calib.histogram`), so the ranges equal one local
   run over the same files bit for bit.

Failures: a task whose worker process or node dies is retried by Ray up to ``max_retries`` times (Ray's task
fault tolerance: ``max_retries`` covers system failures; application exceptions are retried only with
``retry_exceptions``, https://docs.ray.io/en/latest/ray-core/fault_tolerance/tasks.html). Errors raised by onnxq
inside a task (a NaN in a file, a missing file) are deterministic and not retried. A shard that fails for good raises
an :class:`OnnxqError` naming the shard and its files.

``ray`` is imported only by :func:`import_ray`, which says how to install it when it is missing.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper

from onnxq.calib.base import CalibOptions, Calibrator
from onnxq.calib.collect import CollectSettings, collect_statistics
from onnxq.calib.stats import merge_into
from onnxq.config import QuantConfig
from onnxq.data import BatchSource
from onnxq.distributed.shards import Shard, split_files
from onnxq.errors import OnnxqError, require_at_least
from onnxq.graph import fingerprint, load_model, needs_external_data
from onnxq.pipeline import calibration_targets, float_rewrites, prepare
from onnxq.plan import QuantPlan
from onnxq.runtime import SessionSettings
from onnxq.version import __version__

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "onnxq[ray]"'

#: ``progress(shards_done, shards_total)``, called after each shard is merged.
ShardProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class RayOptions:
    """Where and how the shards run."""

    #: Cluster address for ``ray.init`` (``"auto"``, or the head's GCS ``"HOST:PORT"``). ``None``: the
    #: ``RAY_ADDRESS`` environment variable, else a new local Ray instance on this machine.
    address: str | None = None
    #: Number of shards (tasks); ``None``: one per CPU slot of the cluster. Never more than there are data files.
    shards: int | None = None
    #: CPUs Ray reserves for each task; also onnxruntime's intra-op threads inside the task.
    cpus_per_task: int = 1
    #: Times Ray re-runs a task whose worker process or node died.
    max_retries: int = 3
    #: Ray runtime environment for the tasks (``working_dir``, ``pip``, ``env_vars``...), when ray.init is ours.
    runtime_env: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        require_at_least("--shards", self.shards, 1)
        require_at_least("CPUs per Ray task", self.cpus_per_task, 1)
        require_at_least("Ray task retries", self.max_retries, 0)


@dataclass(frozen=True)
class ShardJob:
    """Everything one task needs, by path and by value: small, whatever the size of the data."""

    shard: Shard
    model_path: str
    model_sha256: str
    fingerprint: str
    weights_sha256: str  # of the driver's prepared weights: equalization changes values, not the graph
    onnxq_version: str
    config: QuantConfig
    tensors: dict[str, CalibOptions]  # activation name -> its calibration options
    data_path: str
    max_batches: int | None
    threads: int


@dataclass
class ShardResult:
    calibrators: dict[str, Calibrator]
    batches: int
    node: str


ShardTask = Callable[[ShardJob], ShardResult]


def import_ray():
    """The ``ray`` module, or a one-line OnnxqError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise OnnxqError(f"--ray needs the ray package, which is not installed: {INSTALL_HINT}") from exc
    return ray


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model: onnx.ModelProto) -> str:
    """A digest of every initializer's name, type, shape and values (in graph order)."""
    digest = hashlib.sha256()
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        digest.update(f"{init.name}|{array.dtype}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def calibrate_shard(job: ShardJob) -> ShardResult:
    """Run on a worker: the statistics of one shard's files, after checking the worker sees the driver's model.

    Errors name the node they happened on (a missing mount is usually one node's problem).
    """
    node = socket.gethostname()
    try:
        prepared = _driver_model(job)
        source = BatchSource(prepared, job.data_path, max_batches=job.max_batches,
                             batch_size=job.config.batch_size, files=job.shard.files)
        settings = CollectSettings(job.config.memory_budget_mb, SessionSettings(threads=job.threads),
                                   skip_padding=job.config.skip_padding_tokens)
        calibrators, batches = collect_statistics(prepared, job.tensors, source, settings)
    except OnnxqError as exc:
        raise OnnxqError(f"on node {node}: {exc}") from exc
    return ShardResult(calibrators, batches, node)


def _driver_model(job: ShardJob) -> onnx.ModelProto:
    """The prepared model, checked to be the driver's: same onnxq, same model file, same prepared graph."""
    if __version__ != job.onnxq_version:
        raise OnnxqError(f"onnxq {__version__} here, {job.onnxq_version} on the driver; install the same version on "
                         "every node (or ship it with the runtime_env)")
    path = Path(job.model_path)
    if not path.is_file():
        raise OnnxqError(f"cannot see the model {path}; put it on storage every node mounts at the same path")
    if file_sha256(path) != job.model_sha256:
        raise OnnxqError(f"the model {path} here differs from the driver's (sha256); every node must read the same "
                         "file")
    prepared, _ = prepare(load_model(path), job.config)
    if weights_sha256(prepared) != job.weights_sha256:
        # the driver equalized its model: the same rewrite on the same first batches of the whole data set
        first_batches = BatchSource(prepared, job.data_path, max_batches=job.config.calib_batches,
                                    batch_size=job.config.batch_size)
        float_rewrites(prepared, first_batches, job.config, owned=needs_external_data(prepared))
        if weights_sha256(prepared) != job.weights_sha256:
            raise OnnxqError(f"{path} prepares to other weights here than on the driver; check the onnx/onnxruntime "
                             "versions match the driver's")
    if fingerprint(prepared) != job.fingerprint:
        raise OnnxqError(f"{path} prepares to another graph here (fingerprint {fingerprint(prepared)}, driver "
                         f"{job.fingerprint}); check the onnx/onnxruntime versions match the driver's")
    return prepared


def _execute(task: ShardTask, job: ShardJob) -> ShardResult:
    """The function Ray runs: ``task`` travels as an argument, so another shard task can be swapped in."""
    return task(job)


def shard_files(prepared: onnx.ModelProto, data: object, config: QuantConfig) -> tuple[list[Path], int | None]:
    """The files to shard (after ``--calib-batches``) and the batch limit each shard keeps; checks what Ray needs."""
    if not isinstance(data, (str, os.PathLike)) or str(data) == "random":
        raise OnnxqError("--ray needs calibration data on disk (a folder of batches or an .npz stack) that every "
                         "node can read by path")
    if config.calib.momentum is not None:
        raise OnnxqError("--moving-average depends on the order of the batches, so shards cannot reproduce one run; "
                         "drop --moving-average or --ray")
    source = BatchSource(prepared, Path(data), max_batches=config.calib_batches, batch_size=config.batch_size)
    if source.path.is_file():
        log.warning("%s is one .npz stack: it runs as a single Ray task; a folder of batch files spreads over "
                    "the cluster", source.path)
        return source.files, config.calib_batches
    files = source.files
    if config.calib_batches is not None:
        files = files[:config.calib_batches]  # a folder holds one batch per file
    return files, None


@contextlib.contextmanager
def ray_session(ray, options: RayOptions) -> Iterator[int]:
    """Connect to (or start) Ray unless already connected; yields the cluster's CPU count; disconnects what it
    connected.
    """
    started = False
    if ray.is_initialized():
        if options.address or options.runtime_env:
            log.info("Ray is already initialised in this process; its address and runtime_env stay as they are")
    else:
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if options.runtime_env:
            kwargs["runtime_env"] = options.runtime_env
        if options.address:
            kwargs["address"] = options.address
        elif not os.environ.get("RAY_ADDRESS"):
            kwargs["include_dashboard"] = False
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            address = options.address or os.environ.get("RAY_ADDRESS")
            hint = ""
            if address not in (None, "auto") and "RAY_AUTH_MODE" not in os.environ:
                # Ray enables token authentication on the clusters it starts, but only picks the token up by
                # itself for "auto": docs.ray.io/en/latest/ray-security/token-auth.html
                hint = " (a cluster with token authentication also needs RAY_AUTH_MODE=token and its token here)"
            where = address or "a new local instance"
            raise OnnxqError(f"cannot start Ray ({where}): {_first_line(exc)}{hint}") from exc
        started = True
    try:
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        if started:
            ray.shutdown()


class RayCalibration:
    """Calibrate on a Ray cluster; called like :func:`onnxq.pipeline.calibrate` and returns the same.

    ``model_path`` is read by every worker (shared storage); ``task`` runs one shard (default
    :func:`calibrate_shard`; any picklable callable with its signature).
    """

    def __init__(self, model_path: str | os.PathLike, options: RayOptions | None = None,
                 progress: ShardProgress | None = None, task: ShardTask = calibrate_shard) -> None:
        self.ray = import_ray()
        self.model_path = Path(model_path).resolve()
        self.options = options or RayOptions()
        self.progress = progress
        self.task = task

    def __call__(self, prepared: onnx.ModelProto, plan: QuantPlan, data: object, config: QuantConfig,
                 progress: Callable[[int], None] | None = None) -> tuple[dict[str, Calibrator], int]:
        """Statistics of every planned activation over ``data``; ``progress`` (batches) is not used: shards report
        through the ``progress`` given to the constructor.
        """
        files, max_batches = shard_files(prepared, data, config)
        tensors = calibration_targets(plan, config)
        if not tensors:
            return {}, 0
        digest, graph, weights = file_sha256(self.model_path), fingerprint(prepared), weights_sha256(prepared)
        data_path = str(Path(str(data)).resolve())
        with ray_session(self.ray, self.options) as cpus:
            shards = split_files(files, self.options.shards or max(1, cpus // self.options.cpus_per_task))
            log.info("calibrating %d file(s) in %d shard(s) on a Ray cluster of %d CPU(s)", len(files),
                     len(shards), cpus)
            jobs = [ShardJob(shard=shard, model_path=str(self.model_path), model_sha256=digest, fingerprint=graph,
                             weights_sha256=weights,
                             onnxq_version=__version__, config=config, tensors=tensors, data_path=data_path,
                             max_batches=max_batches, threads=self.options.cpus_per_task) for shard in shards]
            return self._run(jobs)

    def _run(self, jobs: list[ShardJob]) -> tuple[dict[str, Calibrator], int]:
        ray = self.ray
        remote = ray.remote(num_cpus=self.options.cpus_per_task, max_retries=self.options.max_retries,
                            retry_exceptions=False)(_execute)
        pending = {remote.remote(self.task, job): job.shard for job in jobs}
        merged: dict[str, Calibrator] = {}
        batches = 0
        if self.progress is not None:
            self.progress(0, len(jobs))
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                shard = pending.pop(ready[0])
                result = self._result(ready[0], shard)
                # ray.get hands numpy arrays out as read-only views of the object store: the first shard's
                # calibrators become the accumulator, so they are copied into writable memory first
                calibrators = result.calibrators if merged else copy.deepcopy(result.calibrators)
                merge_into(merged, calibrators, shard.label())
                batches += result.batches
                done = len(jobs) - len(pending)
                log.info("%s done on %s: %d batch(es); %d/%d shards done", shard.label(), result.node,
                         result.batches, done, len(jobs))
                if self.progress is not None:
                    self.progress(done, len(jobs))
        finally:
            for ref in pending:
                ray.cancel(ref)
        log.info("calibrated %d activation(s) over %d batch(es) in %d shard(s)", len(merged), batches, len(jobs))
        return merged, batches

    def _result(self, ref, shard: Shard) -> ShardResult:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            reason = str(cause) if isinstance(cause, OnnxqError) else f"{type(cause).__name__}: {_first_line(cause)}"
            raise OnnxqError(f"{shard.label()} failed: {reason}") from exc
        except ray.exceptions.RayError as exc:
            raise OnnxqError(f"{shard.label()} failed after {self.options.max_retries} retries: "
                             f"{type(exc).__name__}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
