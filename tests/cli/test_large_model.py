"""The >2 GB code path on a small model: the threshold is lowered and protobuf's 2 GB limit is simulated (any
ByteSize()/SerializeToString() of a model holding more than the threshold in memory raises), so every stage
(load, prepare, calibrate, insert, checker, validate, save) must take the external-data route. The real 2.25 GiB
run is ``benchmarks/large_model.py``."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest

import onnxq.graph as graph
from tests.cli.test_robustness import _run
from tests.conftest import small_cnn

THRESHOLD = 4096


def _in_memory_bytes(message: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) + 4 * len(t.float_data) for t in graph.all_tensors(message)
               if t.data_location != onnx.TensorProto.EXTERNAL)


@pytest.fixture
def protobuf_limit(monkeypatch: pytest.MonkeyPatch, tmp_path) -> list[str]:
    """Lower the external-data threshold and make whole-model serialization past it fail, as past 2 GB. The
    workspace (big.onnx with external data, calib/) is written first."""
    model = small_cnn()
    onnx.save(model, tmp_path / "big.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="big.onnx.data", size_threshold=0)
    rng = np.random.default_rng(0)
    (tmp_path / "calib").mkdir()
    for i in range(3):
        np.save(tmp_path / "calib" / f"{i}.npy", rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    monkeypatch.setattr(graph, "EXTERNAL_DATA_THRESHOLD", THRESHOLD)
    calls: list[str] = []
    real_size, real_serialize = onnx.ModelProto.ByteSize, onnx.ModelProto.SerializeToString

    def guard(name, real):
        def method(self, *args, **kwargs):
            if _in_memory_bytes(self) > THRESHOLD:
                import traceback

                calls.append(name + "\n" + "".join(traceback.format_stack(limit=8)))
                raise ValueError(f"simulated protobuf 2 GB limit: {name} of a large model")
            return real(self, *args, **kwargs)
        return method

    monkeypatch.setattr(onnx.ModelProto, "ByteSize", guard("ByteSize", real_size))
    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", guard("SerializeToString", real_serialize))
    return calls


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_large_model_end_to_end(tmp_path, protobuf_limit):
    inputs = {p.name: _digest(p) for p in (tmp_path / "big.onnx", tmp_path / "big.onnx.data")}
    out = tmp_path / "q.onnx"
    code, stdout, err = _run(["quantize", str(tmp_path / "big.onnx"), "--calib", str(tmp_path / "calib"),
                              "--val", str(tmp_path / "calib"), "-o", str(out), "--report", str(tmp_path / "r.json")])
    assert code == 0, err
    assert protobuf_limit == [], protobuf_limit[0]  # nothing tried to serialize the whole model
    assert {p.name: _digest(p) for p in (tmp_path / "big.onnx", tmp_path / "big.onnx.data")} == inputs
    header = onnx.load(str(out), load_external_data=False)  # the largest weights are beside it, in q.onnx.data
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer)
    assert (tmp_path / "q.onnx.data").stat().st_size > 1000
    onnx.checker.check_model(str(out), full_check=True)
    assert "SQNR" in stdout
    sqnr = [float(line.split()[-4]) for line in stdout.splitlines() if line.strip().startswith("logits")]
    assert sqnr and sqnr[0] > 20, stdout

    code, stdout, err = _run(["inspect", str(out)])
    assert code == 0 and "QuantizeLinear" in stdout, err
    code, stdout, err = _run(["validate", str(tmp_path / "big.onnx"), str(out), "--data", str(tmp_path / "calib"),
                              "--per-layer"])
    assert code == 0, err
    assert protobuf_limit == []


def test_loaded_model_is_not_mutated_by_a_large_save(tmp_path, protobuf_limit):
    """onnx.save(save_as_external_data=True) clears the raw data of the model it is given; onnxq's writer must not."""
    model = graph.load_model(tmp_path / "big.onnx")
    before = [bytes(t.raw_data) for t in model.graph.initializer]
    graph.save_model(model, tmp_path / "m.onnx")
    graph.check_model(model, full=True)
    assert [bytes(t.raw_data) for t in model.graph.initializer] == before
    assert (tmp_path / "m.onnx.data").exists()


@pytest.fixture
def opset11_model(tmp_path):
    model = small_cnn()
    model.opset_import[0].version = 11
    model.ir_version = 7
    onnx.save(model, tmp_path / "old.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="old.onnx.data", size_threshold=0)


def test_large_opset11_model_is_upgraded_on_the_large_path(tmp_path, opset11_model, protobuf_limit):
    """The version converter runs on the in-memory graph, whose large weights stay on disk."""
    code, stdout, err = _run(["quantize", str(tmp_path / "old.onnx"), "--calib", str(tmp_path / "calib"),
                              "--val", str(tmp_path / "calib"), "-o", str(tmp_path / "q.onnx")])
    assert code == 0, err
    assert protobuf_limit == []
    assert onnx.load(str(tmp_path / "q.onnx"), load_external_data=False).opset_import[0].version == 13
    assert "opset 11 -> 13" in stdout
