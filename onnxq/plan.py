"""The QuantPlan: for every tensor to be quantized, its role, integer type, symmetry, axis and consumers.

The plan is the one source of truth: calibration exposes its activations, the Q/DQ pass inserts exactly its tensors,
scale import/export and reports read it. Nothing downstream re-decides what is quantized.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import onnx

from onnxq.calib.base import CalibOptions
from onnxq.config import NodeSetting, QuantConfig
from onnxq.dtypes import quant_dtype
from onnxq.float_nodes import float_prefix, is_stem_conv
from onnxq.formats import FormatChoice, parse_format
from onnxq.graph import GraphIndex, node_name
from onnxq.integer_region import channels_first_in_onnxruntime, data_inputs, feeding_nodes, integer_region
from onnxq.mask_tensors import masked_tensors
from onnxq.ops import WEIGHTED_OPS, handler, quantized_ops, reduction_axis, weight_axis
from onnxq.rules import TARGET_RULES, TargetRules
from onnxq.short_maps import short_map_depthwise

log = logging.getLogger(__name__)

Role = Literal["activation", "weight"]
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


@dataclass(frozen=True)
class Consumer:
    node: str
    input_index: int


@dataclass
class TensorPlan:
    """How one tensor is quantized; all its listed consumers read one shared Q/DQ pair."""

    name: str
    role: Role
    dtype: str
    symmetric: bool
    axis: int | None = None
    channels: int | None = None  # per-channel count (weights), for import checks
    method: str = "minmax"
    percentile: float | None = None
    consumers: list[Consumer] = field(default_factory=list)
    # the tensor whose scale this one reuses (Concat and data-movement inputs), or None for its own range
    shares_scale_with: str | None = None
    # block-wise weights (int4): elements per scale along ``axis`` (DequantizeLinear opset 21 ``block_size``)
    block_size: int | None = None
    # the precision format (onnxq.formats) of the node that planned this tensor, for reports
    format: str = "int8"

    def __setattr__(self, name: str, value) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(f"tensor plan {self.name!r} is frozen: derive a changed plan with a QuantPlan method")
        object.__setattr__(self, name, value)

    def calib_options(self, base: CalibOptions) -> CalibOptions:
        """The run's calibration options with this tensor's own method and percentile (per-node settings) laid
        over them."""
        return replace(base, method=self.method or base.method,
                       percentile=self.percentile if self.percentile is not None else base.percentile)


@dataclass(frozen=True)
class NodeDecision:
    node: str
    op_type: str
    quantized: bool
    reason: str


@dataclass
class QuantPlan:
    target: str
    tensors: dict[str, TensorPlan] = field(default_factory=dict)
    nodes: list[NodeDecision] = field(default_factory=list)

    def activations(self) -> list[TensorPlan]:
        return [t for t in self.tensors.values() if t.role == "activation"]

    def calibrated_activations(self) -> list[TensorPlan]:
        """Activations that need a range of their own (the others reuse one through ``shares_scale_with``)."""
        return [t for t in self.activations() if t.shares_scale_with is None]

    def weights(self) -> list[TensorPlan]:
        return [t for t in self.tensors.values() if t.role == "weight"]

    def freeze(self) -> QuantPlan:
        """Make the plan read-only (done once it is built): changes go through methods that return a copy."""
        for tensor in self.tensors.values():
            if not tensor.__dict__.get("_frozen"):
                tensor.consumers = _FrozenList(tensor.consumers)
                tensor.__dict__["_frozen"] = True
        self.tensors = _FrozenDict(self.tensors)
        self.nodes = _FrozenList(self.nodes)
        self.__dict__["_frozen"] = True
        return self

    def __setattr__(self, name: str, value) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError("the QuantPlan is frozen: derive a changed plan with a QuantPlan method")
        object.__setattr__(self, name, value)

    def for_scales(self, scales: Mapping, source: str) -> QuantPlan:
        """A copy of the plan restricted to the tensors ``scales`` (name -> parameters with ``dtype`` and ``axis``)
        covers, each node's decision and reason recorded.

        A planned activation without a scale is dropped, and with it the weights whose every consumer lost its
        activation scale (those nodes stay float, reason "no scale for ... in SOURCE"); a scale's integer type
        wins over the plan's, and a per-tensor weight scale makes the weight per tensor."""
        kept: dict[str, TensorPlan] = {}
        lost: dict[str, str] = {}  # node -> the first activation it lost
        for tensor in self.tensors.values():
            if tensor.name not in scales and tensor.role == "activation":
                for c in tensor.consumers:
                    lost.setdefault(c.node, tensor.name)
                continue
            kept[tensor.name] = tensor
        live_nodes = {c.node for t in kept.values() if t.role == "activation" for c in t.consumers}
        derived = QuantPlan(target=self.target)
        for tensor in kept.values():
            if tensor.role == "weight" and lost and not any(c.node in live_nodes for c in tensor.consumers):
                continue
            params = scales.get(tensor.name)
            changes: dict[str, Any] = {}
            if params is not None and params.dtype != tensor.dtype:
                changes.update(dtype=params.dtype, symmetric=quant_dtype(params.dtype).symmetric)
            if params is not None and tensor.role == "weight" and params.axis is None and tensor.axis is not None:
                changes.update(axis=None, channels=None)
            derived.tensors[tensor.name] = _copy_tensor(tensor, **changes)
        planned_nodes = {c.node for t in derived.tensors.values() for c in t.consumers}
        for decision in self.nodes:
            if decision.quantized and decision.node not in planned_nodes:
                why = lost.get(decision.node)
                reason = f"no scale for {why!r} in {source}" if why else f"no scale in {source}"
                decision = NodeDecision(decision.node, decision.op_type, False, reason)
            derived.nodes.append(decision)
        return derived.freeze()

    def summary(self) -> dict[str, Counter]:
        """Per op type: how many nodes were quantized, and how many skipped for each reason."""
        table: dict[str, Counter] = {}
        for d in self.nodes:
            table.setdefault(d.op_type, Counter())["quantized" if d.quantized else d.reason] += 1
        return table


class _FrozenDict(dict):
    """A dict that refuses changes (and still pickles and deep-copies, unlike ``MappingProxyType``)."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("the QuantPlan is frozen: derive a changed plan with a QuantPlan method")

    __setitem__ = __delitem__ = pop = popitem = clear = update = setdefault = _refuse

    def __reduce__(self):
        return (_FrozenDict, (dict(self),))


class _FrozenList(list):
    """A list that refuses changes (equal to a plain list with the same items)."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("the QuantPlan is frozen: derive a changed plan with a QuantPlan method")

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse

    def __reduce__(self):
        return (_FrozenList, (list(self),))


def _copy_tensor(tensor: TensorPlan, **changes) -> TensorPlan:
    values = {f.name: getattr(tensor, f.name) for f in fields(TensorPlan)}
    values.update(changes)
    values["consumers"] = list(values["consumers"])
    return TensorPlan(**values)


def _elem_type(model: onnx.ModelProto, name: str) -> int | None:
    g = model.graph
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.name == name and v.type.HasField("tensor_type"):
            return v.type.tensor_type.elem_type
    for init in g.initializer:
        if init.name == name:
            return init.data_type
    return None


class _Planner:
    def __init__(self, model: onnx.ModelProto, config: QuantConfig) -> None:
        self.model = model
        self.config = config
        self.rules: TargetRules = TARGET_RULES[config.target]
        self.index = GraphIndex.build(model.graph)
        self.plan = QuantPlan(target=config.target)
        self.quantized_ops = frozenset(quantized_ops(self.rules))
        self.float_prefix = float_prefix(model.graph, self.index, self.rules.float_stem_channels)
        # additive attention masks and the scores they land in hold sentinels (-1e4 .. -3.4e38): never quantized
        self.masked = masked_tensors(model.graph, self.index)
        self.short_maps = (short_map_depthwise(model, config.input_shapes)
                           if self.rules.float_short_map_depthwise else set())

    def build(self) -> QuantPlan:
        for node in self.model.graph.node:
            self._decide(node)
        self._keep_short_map_nodes_float()
        if self.rules.residual_add:
            for node in self.model.graph.node:
                if node.op_type == "Add" and node.domain in ("", "ai.onnx"):
                    self._residual_add(node)
        if self.rules.share_scales:
            for tensor in list(self.plan.activations()):
                self._share_scale_upstream(tensor.name, tensor.name)
        if self.rules.integer_kernels:
            self._integer_region()
        return self.plan

    def _keep_short_map_nodes_float(self) -> None:
        """The ops around a float short-map depthwise Conv (its activation, its squeeze-and-excitation gate) stay out
        of the integer region, which would otherwise grow into the gate's Mul (docs/ort_cpu_rules.md 3.2, 3.17)."""
        decided = {d.node for d in self.plan.nodes}
        for node in self.model.graph.node:
            name = node_name(node)
            if name in self.short_maps and name not in decided:
                self.plan.nodes.append(NodeDecision(name, node.op_type, False, _SHORT_MAP_REASON))

    def _allowed(self, node: onnx.NodeProto) -> bool:
        """The node may join the integer region: neither the user nor the target's rules keep it float."""
        if any(d.node == node_name(node) and not d.quantized for d in self.plan.nodes):
            return False
        if node.op_type in WEIGHTED_OPS:
            return False  # weighted ops join only as seeds (decided by _decide with the target's rules)
        setting, _ = self.config.overrides.resolve(node.op_type, node_name(node), NodeSetting(skip=False))
        return not setting.skip

    def _integer_region(self) -> None:
        """Quantize inputs AND outputs of the ops onnxruntime's CPU provider runs in integer, so each node unit
        fuses into one QLinear kernel (onnxq/integer_region.py, docs/ort_cpu_rules.md)."""
        graph = self.model.graph
        quantized = {d.node for d in self.plan.nodes if d.quantized}
        # weight-only formats (w8, int4) keep activations float: their nodes seed no integer region
        seeds = [n for n in graph.node if node_name(n) in quantized and n.op_type in self.rules.integer_kernels
                 and any(self._activation_planned(t) for t in n.input)]
        # a weighted op left float that writes no graph output (ConvTranspose, float by default) still ends no tail:
        # a Conv feeding one is no head (PP-OCRv4 det: its 3x3 Conv before the ConvTranspose upsampling, a third of
        # the model's time; docs/ort_cpu_rules.md 3.5)
        inner_weighted = [n for n in graph.node if n.op_type in WEIGHTED_OPS and n.domain in ("", "ai.onnx")
                          and not any(o in self.index.graph_outputs for o in n.output)]
        upstream = feeding_nodes(self.index, seeds + inner_weighted)
        for conv in [n for n in seeds if n.op_type in self.rules.float_when_writing_graph_output
                     and node_name(n) not in upstream]:
            self._unplan(conv, "feeds only the float tail after the last weighted op (a head): stays float")
            quantized.discard(node_name(conv))
            seeds.remove(conv)
        region = integer_region(graph, self.index, self.rules, seeds, self._is_float_activation, self._allowed,
                                {t.name for t in self.plan.activations()})
        for node in graph.node:
            name = node_name(node)
            if name not in region.members:
                continue
            kernel = self.rules.integer_kernels[node.op_type]
            setting, _ = self.config.overrides.resolve(node.op_type, name, NodeSetting(skip=False))
            if self._format(setting).format.weight_only:
                continue
            if name not in quantized:
                for i, tensor in data_inputs(node, kernel):
                    self._add_tensor(node, name, i, tensor, setting)
                self.plan.nodes.append(NodeDecision(name, node.op_type, True, "quantized"))
            for out in region.outputs[name]:
                readers = [(r, i) for r, i in self.index.consumers.get(out, []) if i >= 0]
                if out in self.index.graph_outputs or not readers:
                    continue  # a node unit that writes a graph output cannot fuse; keep that output float
                if kernel.output_optional and not any(node_name(r) in region.members for r, _ in readers):
                    continue
                for reader, i in readers:
                    self._add_tensor(reader, node_name(reader), i, out, setting)
                if kernel.same_scale and not (kernel.float_at_tail and channels_first_in_onnxruntime(
                        self.index, node, region.absorbed)):
                    self.plan.tensors[out].shares_scale_with = self._scale_root(node.input[0])
        for node in graph.node:
            if node_name(node) in region.absorbed:
                self.plan.nodes.append(NodeDecision(node_name(node), node.op_type, True,
                                                    "fused into its producer's node unit"))

    def _unplan(self, node: onnx.NodeProto, reason: str) -> None:
        """Take back the quantization ``_decide`` planned for ``node`` (its weight and its input's consumer entry)."""
        name = node_name(node)
        for tensor in list(self.plan.tensors.values()):
            tensor.consumers = [c for c in tensor.consumers if c.node != name]
            if not tensor.consumers:
                del self.plan.tensors[tensor.name]
        self.plan.nodes = [d for d in self.plan.nodes if d.node != name]
        self.plan.nodes.append(NodeDecision(name, node.op_type, False, reason))

    def _scale_root(self, tensor: str) -> str:
        while (shared := self.plan.tensors[tensor].shares_scale_with) is not None:
            tensor = shared
        return tensor

    def _is_float_activation(self, name: str) -> bool:
        return bool(name) and not self.index.is_initializer(name) and name not in self.masked and \
            _elem_type(self.model, name) in (None, *FLOAT_TYPES)

    def _residual_add(self, add: onnx.NodeProto) -> None:
        """Add(Conv(...), skip): quantize the skip input so TensorRT fuses Conv+Add in INT8 (tensorrt_rules 3.3)."""
        if len(add.input) != 2 or not all(self._is_float_activation(n) for n in add.input):
            return
        quantized_nodes = {d.node for d in self.plan.nodes if d.quantized}
        from_conv = [(p := self.index.producer.get(n)) is not None and p.op_type == "Conv"
                     and node_name(p) in quantized_nodes and self.index.only_consumer(n) is add
                     and self._activation_planned(p.input[0])
                     for n in add.input]
        if from_conv.count(True) != 1:
            return
        skip = add.input[from_conv.index(False)]
        name = node_name(add)
        setting, _ = self.config.overrides.resolve("Add", name, NodeSetting(skip=False))
        if setting.skip or self._format(setting).format.weight_only:
            return
        self._add_tensor(add, name, from_conv.index(False), skip, setting)
        self.plan.nodes.append(NodeDecision(name, "Add", True, "quantized"))

    def _share_scale_upstream(self, tensor: str, root: str) -> None:
        """Give the data input of a Concat/data-movement producer of ``tensor`` the scale of ``root``, recursively,
        so TensorRT moves Q/DQ through them with no requantization (tensorrt_rules 3.4)."""
        producer = self.index.producer.get(tensor)
        h = handler(producer) if producer is not None else None
        if producer is None or h is None or h.shares_scale is None:
            return
        name = node_name(producer)
        setting, _ = self.config.overrides.resolve(producer.op_type, name, NodeSetting(skip=False))
        if setting.skip or self._format(setting).format.weight_only:
            return
        added = False
        for i in h.scale_sharing_inputs(producer):
            source = producer.input[i]
            if not self._is_float_activation(source):
                continue
            if h.selects and not self._selection_is_all_read(producer, source):
                continue  # a slice's range would clip the rest of its input, which other readers see: stop here
            existing = self.plan.tensors.get(source)
            if existing is not None and existing.shares_scale_with != root:
                continue  # it has a range of its own (another consumer needs it): keep it, TensorRT requantizes
            self._add_tensor(producer, name, i, source, setting)
            self.plan.tensors[source].shares_scale_with = root
            added = True
            self._share_scale_upstream(source, root)
        if added:
            self.plan.nodes.append(NodeDecision(name, producer.op_type, True, "quantized"))

    def _selection_is_all_read(self, producer: onnx.NodeProto, source: str) -> bool:
        """Whether ``producer`` (a Slice/Gather/Split) is the only reader of ``source`` and only one of its outputs is
        read: then nothing but the selected values flow on, and the selection's range may quantize ``source``
        (values it clips are discarded). Otherwise the unselected values -- the q and v slices of a fused qkv
        projection beside k -- would be clipped to the selection's range."""
        if len(self.index.consumers.get(source, [])) != 1:
            return False
        return sum(bool(self.index.consumers.get(o)) or o in self.index.graph_outputs for o in producer.output) <= 1

    def _decide(self, node: onnx.NodeProto) -> None:
        h = handler(node)
        if h is None or node.op_type not in self.quantized_ops:
            return
        name = node_name(node)
        inputs = h.quantized_inputs
        default_reason = self.rules.default_skip_reason(node.op_type) or ""
        if not default_reason and name in self.float_prefix:
            default_reason = _float_stem_reason(node, self.index, self.rules)
        if not default_reason and name in self.short_maps:
            default_reason = _SHORT_MAP_REASON
        if not default_reason and node.op_type in self.rules.float_when_writing_graph_output and \
                any(o in self.index.graph_outputs for o in node.output):
            default_reason = (f"writes a graph output: on {self.rules.name} that node unit cannot fuse, so it stays "
                              "float")
        default = NodeSetting(skip=True) if default_reason else \
            NodeSetting(skip=False, dtype=self.rules.activation_dtype)
        setting, decided_by = self.config.overrides.resolve(node.op_type, name, default)
        if setting.skip:
            reason = default_reason if decided_by == "default" else f"skipped by {decided_by}"
            self.plan.nodes.append(NodeDecision(name, node.op_type, False, reason))
            return
        wanted = [(i, node.input[i]) for i in inputs if i < len(node.input) and node.input[i]]
        not_float = [t for _, t in wanted if _elem_type(self.model, t) not in (None, *FLOAT_TYPES)]
        if not_float:
            self.plan.nodes.append(NodeDecision(name, node.op_type, False, f"input {not_float[0]!r} is not float"))
            return
        choice = self._format(setting)
        if choice.format.weight_only:
            wanted, reason = self._weight_only_inputs(node, wanted, choice)
            if not wanted:
                self.plan.nodes.append(NodeDecision(name, node.op_type, False, reason))
                return
        for i, tensor in wanted:
            self._add_tensor(node, name, i, tensor, setting)
        self.plan.nodes.append(NodeDecision(name, node.op_type, True, "quantized"))

    def _format(self, setting: NodeSetting) -> FormatChoice:
        return parse_format(setting.dtype or self.rules.activation_dtype, setting.block_size)

    def _activation_planned(self, tensor: str) -> bool:
        planned = self.plan.tensors.get(tensor)
        return planned is not None and planned.role == "activation"

    def _weight_only_inputs(self, node: onnx.NodeProto, wanted: list[tuple[int, str]],
                            choice: FormatChoice) -> tuple[list[tuple[int, str]], str]:
        """The weight inputs a weight-only format quantizes, or none and the reason."""
        fmt = choice.format
        if fmt.weight_ops is not None and node.op_type not in fmt.weight_ops:
            return [], f"format {choice.label} applies to {', '.join(sorted(fmt.weight_ops))} only"
        weights = [(i, t) for i, t in wanted if self.index.is_initializer(t)]
        if not weights:
            return [], f"no constant weight input (format {choice.label} is weight-only)"
        if fmt.blockwise:
            weights = [(i, t) for i, t in weights
                       if reduction_axis(node, i, len(self.index.initializers[t].dims)) is not None]
            if not weights:
                return [], f"no weight with a reduction axis to block (format {choice.label})"
        return weights, ""

    def _weight_plan(self, node: onnx.NodeProto, i: int, tensor: str, choice: FormatChoice) -> TensorPlan:
        dims = tuple(self.index.initializers[tensor].dims)
        fmt = choice.format
        if fmt.blockwise:
            axis = reduction_axis(node, i, len(dims))
            if axis is not None and dims[axis] <= (choice.block_size or 0):
                # one block would span the whole reduction axis: that is per-output-channel quantization, written
                # as such (one scale per output channel instead of one per (channel, kernel position) on Conv)
                out_axis = weight_axis(node, i, len(dims), self.rules)
                return TensorPlan(tensor, "weight", fmt.weight_dtype, fmt.weight_symmetric, out_axis,
                                  dims[out_axis] if out_axis is not None else None, "minmax", format=choice.label)
            return TensorPlan(tensor, "weight", fmt.weight_dtype, fmt.weight_symmetric, axis, None, "minmax",
                              block_size=choice.block_size, format=choice.label)
        axis = (weight_axis(node, i, len(dims), self.rules)
                if self.config.per_channel_weights else None)
        return TensorPlan(tensor, "weight", fmt.weight_dtype, fmt.weight_symmetric, axis,
                          dims[axis] if axis is not None else None, self.config.weight_method, format=choice.label)

    def _default_method(self, tensor: str) -> str:
        """Graph inputs use ``config.input_method`` (min-max by default), everything else ``config.calib.method``."""
        if tensor in self.index.graph_inputs and self.config.input_method is not None:
            return self.config.input_method
        return self.config.calib.method

    def _add_tensor(self, node: onnx.NodeProto, consumer: str, i: int, tensor: str, setting: NodeSetting) -> None:
        existing = self.plan.tensors.get(tensor)
        choice = self._format(setting)
        if self.index.is_initializer(tensor):
            wanted = self._weight_plan(node, i, tensor, choice)
            if existing is None and node.op_type in self.rules.integer_kernels and node.op_type not in WEIGHTED_OPS:
                # a constant operand of an integer Add/Mul: the same type as the activations it meets
                fmt = choice.format
                existing = TensorPlan(tensor, "weight", fmt.activation_dtype or self.rules.activation_dtype,
                                      fmt.activation_symmetric, None, None, "minmax", format=choice.label)
            elif existing is None:
                existing = wanted
            elif (existing.dtype, existing.block_size) != (wanted.dtype, wanted.block_size):
                log.info("weight %s is shared by nodes of formats %s and %s; it keeps %s", tensor,
                         existing.format, wanted.format, existing.format)
            elif existing.axis != wanted.axis:
                log.info("weight %s is shared with different axes; quantizing it per tensor", tensor)
                existing.axis, existing.channels, existing.block_size = None, None, None
        elif existing is None:
            method = setting.method or self._default_method(tensor)
            fmt = choice.format
            existing = TensorPlan(tensor, "activation", fmt.activation_dtype or "int8", fmt.activation_symmetric,
                                  None, None, method, setting.percentile, format=choice.label)
        elif existing.format != choice.label:
            log.info("activation %s is read by nodes of formats %s and %s; it keeps %s", tensor, existing.format,
                     choice.label, existing.format)
        if Consumer(consumer, i) not in existing.consumers:
            existing.consumers.append(Consumer(consumer, i))
        self.plan.tensors[tensor] = existing


_SHORT_MAP_REASON = ("float with the depthwise Conv it follows: on ort-cpu a depthwise Conv on a feature map so short "
                     "that most kernel rows read padding runs faster in float, which skips those rows "
                     "(docs/ort_cpu_rules.md 3.17)")


def _float_stem_reason(node: onnx.NodeProto, index: GraphIndex, rules: TargetRules) -> str:
    if is_stem_conv(node, index, rules.float_stem_channels):
        return (f"Conv over the image (<= {rules.float_stem_channels} input channels) stays float on {rules.name}: "
                "its integer kernel measured slower than the float one (docs/ort_cpu_rules.md 3.10)")
    return (f"depthwise Conv right after the float image stem stays float on {rules.name} "
            "(docs/ort_cpu_rules.md 3.10)")


def build_plan(model: onnx.ModelProto, config: QuantConfig) -> QuantPlan:
    """Decide, for the prepared float model, which tensors get Q/DQ and how."""
    plan = _Planner(model, config).build().freeze()
    if config.target == "tensorrt":
        asymmetric = sorted({t.format for t in plan.tensors.values() if not t.symmetric})
        if asymmetric:
            log.warning("format(s) %s quantize asymmetrically, which TensorRT cannot run (symmetric Q/DQ only; "
                        "'onnxq lint' reports each node); use them with --target ort-cpu", ", ".join(asymmetric))
    log.info("plan: %d activation(s), %d weight(s) to quantize", len(plan.activations()), len(plan.weights()))
    return plan
