"""Precision formats a user picks per model, op type or node: which tensors of a weighted op get Q/DQ, in what type.

=============  ===================  ====================================  ===================================
format         activations          weights                               notes
=============  ===================  ====================================  ===================================
``int8``       int8, symmetric      int8 symmetric, per channel           TensorRT's INT8 (the default there)
``int8-asym``  int8, asymmetric     int8 symmetric, per channel           not TensorRT (symmetric only)
``uint8``      uint8, asymmetric    int8 symmetric, per channel           onnxruntime CPU's default
``fp8``        FLOAT8E4M3FN, per    FLOAT8E4M3FN per channel              opset 19; TensorRT on Ada/Hopper
               tensor (amax/448)
``w8``         float                int8 symmetric, per channel           weight-only
``int4``       float                int4 symmetric, block-wise along the  weight-only; opset 21
                                    reduction axis (``block_size``)
``int4-asym``  float                uint4 asymmetric (zero point per      weight-only; opset 21
                                    block), block-wise
=============  ===================  ====================================  ===================================

Block-wise weights use DequantizeLinear's ``block_size`` (opset 21): the scale has the weight's shape with the
blocked axis divided by ``block_size`` (rounded up). The blocked axis is the reduction axis of the op: MatMul's
``K`` (rank-2 weight axis 0), Gemm's ``K`` (axis 0, or 1 with ``transB``), Conv's input channels (axis 1).
A name ``int4-g64`` (``int4-asym-g64``) is the format with block size 64.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from onnxq.dtypes import QUANT_DTYPES as DTYPES
from onnxq.errors import OnnxqError

BLOCK_SIZES = (16, 32, 64, 128, 256)
DEFAULT_BLOCK_SIZE = 128


@dataclass(frozen=True)
class Format:
    name: str
    activation_dtype: str | None  # None: weight-only, activations stay float
    activation_symmetric: bool
    weight_dtype: str
    weight_symmetric: bool
    blockwise: bool
    # op types a weight-only format applies to (None: every weighted op the target quantizes)
    weight_ops: frozenset[str] | None = None
    description: str = ""

    @property
    def weight_only(self) -> bool:
        return self.activation_dtype is None

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(d for d in (self.activation_dtype, self.weight_dtype) if d is not None)

    @property
    def min_opset(self) -> int:
        return max([DTYPES[d].min_opset for d in self.dtypes] + [21 if self.blockwise else 13])

    @property
    def min_ir_version(self) -> int:
        return max(DTYPES[d].min_ir_version for d in self.dtypes)


_BLOCK_OPS = frozenset({"MatMul", "Gemm", "Conv"})

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("int8", "int8", True, "int8", True, False, description="INT8 symmetric activations and weights"),
    Format("int8-asym", "int8", False, "int8", True, False, description="INT8 asymmetric activations"),
    Format("uint8", "uint8", False, "int8", True, False, description="UINT8 asymmetric activations"),
    Format("fp8", "float8e4m3fn", True, "float8e4m3fn", True, False, description="FP8 E4M3FN activations+weights"),
    Format("w8", None, True, "int8", True, False, description="INT8 weight-only, per channel"),
    Format("int4", None, True, "int4", True, True, _BLOCK_OPS, "INT4 symmetric weight-only, block-wise"),
    Format("int4-asym", None, True, "uint4", False, True, _BLOCK_OPS, "UINT4 asymmetric weight-only, block-wise"),
)}

# formats whose activations TensorRT cannot run: its Q/DQ layers are symmetric (zero point 0) and signed
NOT_ON_TENSORRT = frozenset({"int8-asym", "uint8"})

_GROUP = re.compile(r"^(?P<base>.+)-g(?P<block>\d+)$")


@dataclass(frozen=True)
class FormatChoice:
    """A format and, for block-wise ones, the block size (``int4-g64``)."""

    format: Format
    block_size: int | None = None

    @property
    def label(self) -> str:
        return f"{self.format.name}-g{self.block_size}" if self.block_size else self.format.name


def parse_format(text: str, block_size: int | None = None) -> FormatChoice:
    """``"int8"``, ``"int4"`` or ``"int4-g64"`` -> a :class:`FormatChoice`; a ``-gN`` suffix wins over
    ``block_size``, which defaults to 128 for block-wise formats."""
    name, block = text.strip(), block_size
    match = _GROUP.match(name)
    if match and match["base"] in FORMATS:
        name, block = match["base"], int(match["block"])
    if name not in FORMATS:
        raise OnnxqError(f"unknown format {text!r}; choose one of {', '.join(FORMATS)} (block-wise ones also as "
                         f"e.g. int4-g64)")
    fmt = FORMATS[name]
    if not fmt.blockwise:
        if match and match["base"] in FORMATS:
            raise OnnxqError(f"format {fmt.name!r} is not block-wise; drop the -g suffix of {text!r}")
        return FormatChoice(fmt, None)
    block = DEFAULT_BLOCK_SIZE if block is None else block
    check_block_size(block)
    return FormatChoice(fmt, block)


def check_block_size(block: int) -> None:
    if block not in BLOCK_SIZES:
        raise OnnxqError(f"block size must be one of {', '.join(map(str, BLOCK_SIZES))}, got {block}")


def format_for_dtype_setting(dtype: str) -> Format:
    """The format a node setting's ``dtype`` names (``"int8"``, ``"uint8"``, ``"fp8"``, ``"int4"``, ...)."""
    return parse_format(dtype).format
