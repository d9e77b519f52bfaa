"""Calibration on a local Ray instance: 4 shards give the local run's ranges bit for bit, a crashed task is retried,
a shard that fails names its files, and ``--ray`` without ray installed is one line and exit 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxq.calib.base import CalibOptions
from onnxq.config import QuantConfig
from onnxq.data import BatchSource
from onnxq.errors import OnnxqError
from onnxq.pipeline import calibrate, calibration_targets, prepare
from onnxq.plan import build_plan
from tests.conftest import small_cnn

METHODS = ("minmax", "percentile", "entropy", "mse")


@pytest.fixture(scope="session")
def ray_instance():
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's shard tasks travel by value
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def model_and_data(tmp_path):
    """small_cnn and 8 batch files of different statistics (so every shard sees other ranges)."""
    onnx.save(small_cnn(), tmp_path / "model.onnx")
    data = tmp_path / "calib"
    data.mkdir()
    rng = np.random.default_rng(3)
    for i in range(8):
        scale = 0.5 + 0.3 * i
        np.save(data / f"{i:03d}.npy", (rng.standard_normal((2, 3, 16, 16)) * scale).astype(np.float32))
    return tmp_path / "model.onnx", data


def prepared_and_plan(model_path: Path, config: QuantConfig):
    prepared, _ = prepare(onnx.load(model_path), config)
    return prepared, build_plan(prepared, config)


def assert_identical(local: dict, distributed: dict, plan) -> None:
    assert local.keys() == distributed.keys()
    for name, cal in local.items():
        other = distributed[name]
        symmetric = plan.tensors[name].symmetric
        assert cal.compute_range(symmetric) == other.compute_range(symmetric), name
        for key, value in cal.state().items():
            assert np.array_equal(np.asarray(value), np.asarray(other.state()[key])), (name, key)


@pytest.mark.slow  # a local Ray instance: ~10-15 s to start on 2 cores, once per session
@pytest.mark.parametrize("method", METHODS)
def test_four_shards_equal_one_local_run(ray_instance, model_and_data, method):
    from onnxq.distributed.ray_calibrate import RayCalibration, RayOptions

    model_path, data = model_and_data
    config = QuantConfig(calib=CalibOptions(method=method, num_bins=256), input_method=None)
    prepared, plan = prepared_and_plan(model_path, config)
    local, local_batches = calibrate(prepared, plan, str(data), config)
    seen = []
    run = RayCalibration(model_path, RayOptions(shards=4), progress=lambda done, total: seen.append((done, total)))
    merged, batches = run(prepared, plan, str(data), config)
    assert batches == local_batches == 8
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert_identical(local, merged, plan)
    # the shards really differ: one shard alone gives another range for some tensor
    one, _ = calibrate(prepared, plan, BatchSource(prepared, data, files=sorted(data.iterdir())[:2]), config)
    name = plan.calibrated_activations()[0].name
    assert one[name].compute_range(True) != local[name].compute_range(True)


class CrashOnce:
    """A shard task that kills its worker process the first time it runs for shard 2 (a marker file is the memory
    that survives the process); every other run calibrates normally."""

    def __init__(self, marker: Path, always: bool = False) -> None:
        self.marker = marker
        self.always = always

    def __call__(self, job):
        from onnxq.distributed.ray_calibrate import calibrate_shard

        if job.shard.index == 1 and self.marker.exists():
            if not self.always:
                self.marker.unlink()
            os._exit(1)
        return calibrate_shard(job)


@pytest.mark.slow  # a local Ray instance: ~10-15 s to start on 2 cores, once per session
def test_a_killed_worker_is_retried_and_the_result_is_unchanged(ray_instance, model_and_data, tmp_path):
    from onnxq.distributed.ray_calibrate import RayCalibration, RayOptions

    model_path, data = model_and_data
    config = QuantConfig(calib=CalibOptions(method="entropy", num_bins=256))
    prepared, plan = prepared_and_plan(model_path, config)
    marker = tmp_path / "crash-once"
    marker.touch()
    run = RayCalibration(model_path, RayOptions(shards=4, max_retries=2), task=CrashOnce(marker))
    merged, batches = run(prepared, plan, str(data), config)
    assert not marker.exists()  # the crash really happened
    local, _ = calibrate(prepared, plan, str(data), config)
    assert batches == 8
    assert_identical(local, merged, plan)


@pytest.mark.slow  # a local Ray instance: ~10-15 s to start on 2 cores, once per session
def test_a_shard_that_keeps_failing_names_its_files(ray_instance, model_and_data, tmp_path):
    from onnxq.distributed.ray_calibrate import RayCalibration, RayOptions

    model_path, data = model_and_data
    config = QuantConfig()
    prepared, plan = prepared_and_plan(model_path, config)
    marker = tmp_path / "crash-always"
    marker.touch()
    run = RayCalibration(model_path, RayOptions(shards=4, max_retries=1), task=CrashOnce(marker, always=True))
    with pytest.raises(OnnxqError, match=r"shard 2/4 \(002\.npy, 003\.npy in .*\) failed after 1 retries"):
        run(prepared, plan, str(data), config)


@pytest.mark.slow  # a local Ray instance: ~10-15 s to start on 2 cores, once per session
def test_a_bad_file_fails_its_shard_without_retries(ray_instance, model_and_data):
    from onnxq.distributed.ray_calibrate import RayCalibration, RayOptions

    model_path, data = model_and_data
    bad = np.load(data / "005.npy")
    bad[0, 0, 0, 0] = np.nan
    np.save(data / "005.npy", bad)
    config = QuantConfig()
    prepared, plan = prepared_and_plan(model_path, config)
    with pytest.raises(OnnxqError, match=r"shard 3/4 \(004\.npy, 005\.npy in .*\) failed: on node .+: 005\.npy: "
                                         r"input 'x' holds 1 NaN"):
        RayCalibration(model_path, RayOptions(shards=4))(prepared, plan, str(data), config)


@pytest.mark.parametrize("command, output", [("calibrate", "stats.npz"), ("quantize", "model.int8.onnx")])
def test_ray_flag_without_ray_is_one_line_and_exit_2(monkeypatch, model_and_data, tmp_path, capsys, command, output):
    from onnxq.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    model_path, data = model_and_data
    out = tmp_path / output
    assert main([command, str(model_path), "--calib", str(data), "--ray", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['onnxq: error: --ray needs the ray package, which is not installed: pip install "onnxq[ray]"']
    assert not out.exists()


@pytest.mark.slow  # a local Ray instance: ~10-15 s to start on 2 cores, once per session
def test_calibrate_and_quantize_commands_with_ray_match_local_runs(ray_instance, model_and_data, tmp_path):
    from onnxq.calib.stats import load_stats
    from onnxq.cli import main
    from onnxq.graph import fingerprint

    model_path, data = model_and_data
    flags = ["--method", "percentile", "--num-bins", "256"]
    for name, extra in (("local", []), ("ray", ["--ray", "--shards", "3"])):
        assert main(["calibrate", str(model_path), "--calib", str(data), *flags, *extra,
                     "-o", str(tmp_path / f"{name}.npz")]) == 0
        assert main(["quantize", str(model_path), "--calib", str(data), *flags, *extra,
                     "-o", str(tmp_path / f"{name}.onnx")]) == 0
    assert (tmp_path / "local.onnx").read_bytes() == (tmp_path / "ray.onnx").read_bytes()
    config = QuantConfig(calib=CalibOptions(method="percentile", num_bins=256))
    prepared, plan = prepared_and_plan(model_path, config)
    local, local_batches = load_stats(tmp_path / "local.npz", fingerprint(prepared))
    merged, batches = load_stats(tmp_path / "ray.npz", fingerprint(prepared))
    assert batches == local_batches == 8
    assert_identical(local, merged, plan)


def test_shards_are_runs_of_consecutive_files_of_near_equal_size(tmp_path):
    from onnxq.distributed.shards import split_files

    files = [tmp_path / f"{i:03d}.npy" for i in range(7)]
    shards = split_files(files, 3)
    assert [len(s.files) for s in shards] == [3, 2, 2]
    assert [Path(f) for s in shards for f in s.files] == [f.resolve() for f in files]
    assert len(split_files(files, 20)) == 7  # never an empty shard
    assert split_files(files, 3)[1].label() == f"shard 2/3 (003.npy, 004.npy in {tmp_path.resolve()})"
    assert split_files(files, 1)[0].label() == f"shard 1/1 (7 files 000.npy .. 006.npy in {tmp_path.resolve()})"


def test_a_worker_that_sees_another_model_file_refuses_it(model_and_data):
    """What the task checks before calibrating (run here in-process: the check does not need Ray)."""
    from onnxq.distributed.ray_calibrate import ShardJob, calibrate_shard, file_sha256, weights_sha256
    from onnxq.distributed.shards import split_files
    from onnxq.graph import fingerprint
    from onnxq.version import __version__

    model_path, data = model_and_data
    config = QuantConfig()
    prepared, plan = prepared_and_plan(model_path, config)
    job = ShardJob(shard=split_files(sorted(data.iterdir()), 4)[0], model_path=str(model_path),
                   model_sha256=file_sha256(model_path), fingerprint=fingerprint(prepared),
                   weights_sha256=weights_sha256(prepared), onnxq_version=__version__,
                   config=config, tensors=calibration_targets(plan, config), data_path=str(data),
                   max_batches=None, threads=1)
    result = calibrate_shard(job)
    assert result.batches == 2 and result.calibrators.keys() == {t.name for t in plan.calibrated_activations()}
    onnx.save(small_cnn(seed=5), model_path)  # same graph, other weights: only the file digest tells
    with pytest.raises(OnnxqError, match="differs from the driver's"):
        calibrate_shard(job)
    model_path.unlink()
    with pytest.raises(OnnxqError, match="on node .+: cannot see the model"):
        calibrate_shard(job)


@pytest.mark.slow  # a local Ray instance: ~10-15 s to start on 2 cores, once per session
def test_calib_batches_keeps_the_first_files_as_a_local_run_does(ray_instance, model_and_data):
    from onnxq.distributed.ray_calibrate import RayCalibration, RayOptions

    model_path, data = model_and_data
    config = QuantConfig(calib=CalibOptions(method="entropy", num_bins=256), calib_batches=5)
    prepared, plan = prepared_and_plan(model_path, config)
    local, local_batches = calibrate(prepared, plan, str(data), config)
    merged, batches = RayCalibration(model_path, RayOptions(shards=4))(prepared, plan, str(data), config)
    assert batches == local_batches == 5
    assert_identical(local, merged, plan)


@pytest.mark.parametrize("data, config, message", [
    ("random", QuantConfig(), "needs calibration data on disk"),
    (None, QuantConfig(calib=CalibOptions(momentum=0.9)), "--moving-average depends on the order"),
])
def test_what_shards_cannot_reproduce_is_refused(model_and_data, data, config, message):
    from onnxq.distributed.ray_calibrate import shard_files

    model_path, folder = model_and_data
    prepared, _ = prepared_and_plan(model_path, config)
    with pytest.raises(OnnxqError, match=message):
        shard_files(prepared, data or str(folder), config)


@pytest.mark.slow  # a local Ray instance, and a CLI process that connects to it as a new Ray job
def test_a_separate_process_connects_by_address(ray_instance, model_and_data, tmp_path):
    """``--ray HOST:PORT`` from another process: ray.init(address=...) and its shutdown, as on a running cluster."""
    import subprocess

    from onnxq.calib.stats import load_stats
    from onnxq.graph import fingerprint

    model_path, data = model_and_data
    address = ray_instance.get_runtime_context().gcs_address
    out = tmp_path / "stats.npz"
    # an explicit address reads the cluster's token only with RAY_AUTH_MODE=token (Ray's token authentication)
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "onnxq.cli", "-v", "calibrate", str(model_path), "--calib", str(data),
                           "--ray", address, "--shards", "2", "-o", str(out)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "2/2 shards done" in proc.stderr
    config = QuantConfig()
    prepared, plan = prepared_and_plan(model_path, config)
    local, _ = calibrate(prepared, plan, str(data), config)
    merged, batches = load_stats(out, fingerprint(prepared))
    assert batches == 8
    assert_identical(local, merged, plan)


def test_an_npz_stack_is_one_shard_and_keeps_the_batch_limit(model_and_data, tmp_path, caplog):
    from onnxq.distributed.ray_calibrate import shard_files

    model_path, _ = model_and_data
    stack = tmp_path / "stack.npz"
    np.savez(stack, x=np.random.default_rng(0).standard_normal((5, 2, 3, 16, 16)).astype(np.float32))
    config = QuantConfig(calib_batches=3)
    prepared, _ = prepared_and_plan(model_path, config)
    assert shard_files(prepared, str(stack), config) == ([stack], 3)
    assert "runs as a single Ray task" in caplog.text


@pytest.mark.slow  # a local Ray instance: ~10-15 s to start on 2 cores, once per session
def test_sensitivity_with_ray_gives_the_local_report(ray_instance, model_and_data, tmp_path):
    import json

    from tests.helpers import run_cli

    model_path, data = model_and_data
    reports = {}
    for name, extra in (("local", []), ("ray", ["--ray", "--shards", "4"])):
        r = run_cli("sensitivity", model_path, "--calib", data, "--val", data, "--method", "entropy",
                    "--num-bins", "256", *extra, "-o", tmp_path / name)
        assert r.returncode == 0, r.stderr
        reports[name] = json.loads((tmp_path / name / "sensitivity.json").read_text())
    for key in ("all_quantized", "nodes", "batches"):
        assert reports["ray"][key] == reports["local"][key]
