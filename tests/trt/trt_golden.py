"""Small Q/DQ graphs built in code for the TensorRT lint and scale-reader tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DTYPES = {"int8": (TensorProto.INT8, np.int8), "uint8": (TensorProto.UINT8, np.uint8)}


class Graph:
    def __init__(self, opset: int = 13) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[str] = []

    def input(self, name: str, shape=(1, 4, 8, 8), elem=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def init(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, outputs: list[str] | None = None, **attrs) -> str:
        outputs = outputs or [f"{name}_out"]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs[0]

    @staticmethod
    def zero_point(zp, scale: np.ndarray, dtype: str) -> np.ndarray:
        return np.broadcast_to(np.asarray(zp), scale.shape).astype(DTYPES[dtype][1])

    def q(self, x: str, name: str, scale, zp=0, dtype="int8", axis=None, with_zp=True) -> str:
        scale = np.asarray(scale, np.float32)
        s = self.init(f"{name}_scale", scale)
        inputs = [x, s]
        if with_zp:
            inputs.append(self.init(f"{name}_zp", self.zero_point(zp, scale, dtype)))
        attrs = {} if axis is None else {"axis": axis}
        return self.node("QuantizeLinear", inputs, name, **attrs)

    def dq(self, xq: str, name: str, scale, zp=0, dtype="int8", axis=None, with_zp=True) -> str:
        scale = np.asarray(scale, np.float32)
        s = self.init(f"{name}_scale", scale)
        inputs = [xq, s]
        if with_zp:
            inputs.append(self.init(f"{name}_zp", self.zero_point(zp, scale, dtype)))
        attrs = {} if axis is None else {"axis": axis}
        return self.node("DequantizeLinear", inputs, name, **attrs)

    def qdq(self, x: str, name: str, scale=0.05, zp=0, dtype="int8", axis=None) -> str:
        return self.dq(self.q(x, f"{name}_Q", scale, zp, dtype, axis), f"{name}_DQ", scale, zp, dtype, axis)

    def weight(self, name: str, shape, axis: int | None = 0, scale=None) -> str:
        w = self.init(name, np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.1)
        if axis is None:
            return self.qdq(w, name, scale if scale is not None else 0.01)
        n = shape[axis]
        return self.qdq(w, name, np.full(n, 0.01, np.float32) if scale is None else scale, axis=axis)

    def output(self, name: str) -> None:
        self.outputs.append(name)

    def model(self, check: bool = True) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "golden", self.inputs,
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["d0"]) for o in self.outputs],
                                  self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        if check:
            onnx.checker.check_model(model)
        return model


def conv_block(g: Graph, x: str, name: str, cin: int = 4, cout: int = 4, qdq_input: bool = True) -> str:
    xin = g.qdq(x, f"{name}_x") if qdq_input else x
    w = g.weight(f"{name}.weight", (cout, cin, 3, 3), axis=0)
    b = g.init(f"{name}.bias", np.zeros(cout, np.float32))
    return g.node("Conv", [xin, w, b], name, pads=[1, 1, 1, 1])


def clean_model() -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Relu with int8 symmetric Q/DQ on every weighted-op input: no findings."""
    g = Graph()
    x = g.input("x")
    y = g.node("Relu", [conv_block(g, x, "conv1")], "relu1")
    y = g.node("Relu", [conv_block(g, y, "conv2")], "relu2")
    g.output(y)
    return g.model()
