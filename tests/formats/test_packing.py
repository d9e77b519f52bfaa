"""4-bit packing round-trips exactly and agrees with onnx; float8 storage agrees with onnx.numpy_helper."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxq.dtypes import to_storage
from onnxq.errors import OnnxqError
from onnxq.scales.packing import from_tensor_proto, pack_4bit, to_tensor_proto, unpack_4bit


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("count", [1, 2, 7, 64, 1001])
def test_4bit_pack_unpack_round_trips_exactly(signed, count):
    rng = np.random.default_rng(count)
    lo, hi = (-8, 8) if signed else (0, 16)
    values = rng.integers(lo, hi, size=count)
    packed = pack_4bit(values, signed)
    assert len(packed) == (count + 1) // 2
    np.testing.assert_array_equal(unpack_4bit(packed, count, signed), values)


@pytest.mark.parametrize("dtype,ml", [("int4", ml_dtypes.int4), ("uint4", ml_dtypes.uint4)])
def test_4bit_tensor_matches_onnx_packing(dtype, ml):
    rng = np.random.default_rng(0)
    lo, hi = (-8, 8) if dtype == "int4" else (0, 16)
    values = rng.integers(lo, hi, size=(5, 7))
    ours = to_tensor_proto(values, dtype, "w")
    theirs = numpy_helper.from_array(values.astype(ml), "w")
    assert ours.data_type == theirs.data_type and list(ours.dims) == list(theirs.dims)
    assert ours.raw_data == theirs.raw_data
    np.testing.assert_array_equal(numpy_helper.to_array(ours).astype(np.int32), values)
    np.testing.assert_array_equal(from_tensor_proto(ours), values)


def test_4bit_out_of_range_is_an_error():
    with pytest.raises(OnnxqError, match="4-bit values"):
        pack_4bit(np.array([8]), signed=True)


def test_fp8_storage_matches_ml_dtypes_and_onnx():
    """Rounding to nearest even and saturation at 448, as QuantizeLinear(saturate=1) to FLOAT8E4M3FN."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(4000) * 50, [448.0, 449.0, 464.0, 1e6, -1e6, 0.0, -0.0, 2.0 ** -9,
                                                         2.0 ** -10, 17.0, 18.0, 19.0]]).astype(np.float32)
    ours = to_storage(x, "float8e4m3fn")
    expected = np.clip(x, -448, 448).astype(ml_dtypes.float8_e4m3fn)
    np.testing.assert_array_equal(ours.view(np.uint8), expected.view(np.uint8))
    assert float(ours[-3]) == 16.0 and float(ours[-1]) == 20.0  # ties to even (step 2 in [16, 32))
    proto = to_tensor_proto(ours, "float8e4m3fn", "x")
    assert proto.data_type == onnx.TensorProto.FLOAT8E4M3FN
    back = numpy_helper.to_array(proto)
    np.testing.assert_array_equal(np.asarray(back).view(np.uint8), ours.view(np.uint8))
    theirs = numpy_helper.from_array(expected, "x")
    assert theirs.raw_data == proto.raw_data


def test_scale_files_carry_dtype_and_block_size(tmp_path, caplog):
    """onnxq JSON round-trips fp8 and block-wise int4 exactly; TensorRT cache and AIMET leave them out, saying so."""
    from onnxq.scales.io import load_scales, save_scales
    from onnxq.scales.types import asymmetric_params, symmetric_params

    rng = np.random.default_rng(2)
    table = {
        "f8act": symmetric_params(3.0, dtype="float8e4m3fn"),
        "w4": symmetric_params(rng.uniform(0.1, 1, (2, 5)), 0, "int4", 64),
        "u4": asymmetric_params(-rng.uniform(0.1, 1, (5, 2)), rng.uniform(0.1, 1, (5, 2)), 1, "uint4", 32),
        "x8": symmetric_params(2.0),
    }
    path = save_scales(table, tmp_path / "s.json", "json")
    back = load_scales(path)
    assert set(back) == set(table) and all(back[k].equals(table[k]) for k in table)
    assert back["w4"].block_size == 64 and back["u4"].zero_point.dtype == np.uint8
    with caplog.at_level("WARNING"):
        save_scales(table, tmp_path / "c.cache", "trt-cache")
        save_scales(table, tmp_path / "a.encodings", "aimet")
    cache = (tmp_path / "c.cache").read_text()
    assert "x8:" in cache and "f8act" not in cache and "w4" not in cache
    aimet = (tmp_path / "a.encodings").read_text()
    assert "x8" in aimet and "f8act" not in aimet and "u4" not in aimet
    assert caplog.text.count("left out") == 2
