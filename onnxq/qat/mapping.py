"""Map every tensor of an onnxq QuantPlan to the place in a torch model that produces it.

Method (verified by values, not guessed from names):

1. Weights. Each planned weight initializer is compared by value with every floating-point parameter of the torch
   model, as stored (``W``), transposed (``W.T``: ``nn.Linear`` on a 3-d input exports as ``MatMul(x, W.T)``) and,
   for a Conv/ConvTranspose/Linear whose output feeds a BatchNorm, BN-folded (``W * gamma / sqrt(var + eps)`` per
   output channel: the legacy exporter fuses Conv+BN in eval mode, onnxq's prepare folds ConvTranspose+BN and
   Gemm+BN). Which BN reads which module's output is found by running the model with forward hooks (the BN's input
   is the very tensor object the module returned). A match within 1e-4 of the weight's magnitude wins; two
   candidates that match equally are broken by the ONNX node name's scope (``/head/up1/up1.0/ConvTranspose``),
   otherwise the weight is listed as unmapped.
2. Activations. A calibrated activation read by a node whose weight maps to a module's parameter is that module's
   input (a forward pre-hook). One read by a weight-less MatMul or by an Add (TensorRT's residual-add rule) is an
   argument of a ``matmul``/``add`` call in torch: the calls of one eval forward are recorded in order and the one
   whose arguments equal the node's inputs (run in onnxruntime on the same inputs) is taken; several equal calls
   (the exporter merged identical computations) all get the fake quant. Every site is checked by value.
3. Activations with ``shares_scale_with`` feed Concat/data-movement nodes through a Q/DQ with their root's scale,
   so in the deployed graph the *output* of such a node is quantized for every reader. These ops commute with
   per-tensor fake quant, so in torch the output of the matching data-movement call (``reshape``, ``transpose``,
   ``cat``, ``__getitem__``, ...; matched by value and shape among the recorded calls) is fake-quantized with the
   root's quantizer. Exact except for Resize with interpolation (approximately).

Anything that cannot be matched is listed in :attr:`Mapping.unmapped` with the reason; nothing is dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from torch import nn

from onnxq.graph import GraphIndex, node_name
from onnxq.plan import QuantPlan
from onnxq.qat.trace import BATCHNORM, ONNX_TO_KINDS, WEIGHTED, Recording
from onnxq.runtime import make_session, run_named

log = logging.getLogger(__name__)

WEIGHT_TOL = 1e-4
ACT_TOL = 1e-3


@dataclass(frozen=True)
class WeightSite:
    tensor: str  # planned ONNX weight initializer
    param: str  # qualified torch parameter name
    module: str | None  # owning weighted module (its input is the node's activation), or None for a bare parameter
    transposed: bool  # the ONNX array is the torch parameter transposed (2-d)
    bn: str | None  # BatchNorm folded into the ONNX weight, or None
    torch_axis: int | None  # per-channel axis in torch layout


@dataclass(frozen=True)
class ActSite:
    tensor: str  # calibrated planned activation
    node: str  # the ONNX consumer
    # "module" (its input) | "matmul" | "add" (an argument) | "move" (an output of a data-movement call) |
    # "module_out" (an output of a torch.nn data-movement module: MaxPool2d, Flatten, Upsample, ...)
    kind: str
    target: str  # module name for kinds "module" and "module_out", else the function kind
    call: int  # call index (of that module, or of that kind of function) within one forward pass
    arg: int  # argument index; for "move", output index


@dataclass
class Mapping:
    weights: dict[str, WeightSite] = field(default_factory=dict)
    activations: dict[str, list[ActSite]] = field(default_factory=dict)
    shared: dict[str, str] = field(default_factory=dict)  # tensor -> the root whose fake quant stands for it
    unmapped: dict[str, str] = field(default_factory=dict)  # tensor -> why

    def summary(self) -> str:
        sites = sum(len(v) for v in self.activations.values())
        return (f"{len(self.weights)} weight(s), {len(self.activations)} activation(s) at {sites} site(s), "
                f"{len(self.shared)} sharing a scale, {len(self.unmapped)} unmapped")


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    scale = max(float(np.abs(b).max()) if b.size else 0.0, 1e-12)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) / scale if a.size else 0.0


def _bn_factor(bn: nn.Module) -> np.ndarray | None:
    if not isinstance(bn, BATCHNORM) or bn.running_var is None:
        return None
    var = bn.running_var.detach().double().cpu().numpy()
    gamma = bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(var)
    return gamma / np.sqrt(var + bn.eps)


def scale_output_channels(module: nn.Module, w, s):
    """``w`` (torch layout) with output channel c multiplied by ``s[c]``; works on numpy arrays and torch tensors."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        g = module.groups
        cin, per_group = w.shape[0], w.shape[1]
        grouped = w.reshape((g, cin // g, per_group) + tuple(w.shape[2:]))
        factor = s.reshape((g, 1, per_group) + (1,) * (w.ndim - 2))
        return (grouped * factor).reshape(w.shape)
    return w * s.reshape((-1,) + (1,) * (w.ndim - 1))


def divide_output_channels(module: nn.Module, w, s):
    return scale_output_channels(module, w, 1.0 / s)


def _scope_score(node_name: str, module_name: str) -> int:
    """How well an exporter node name (``/a/b.0/b.0.1/Conv``) agrees with a qualified module name."""
    if not module_name:
        return 0
    parts = [p for p in node_name.split("/") if p]
    last = module_name.split(".")
    score = 0
    for i in range(1, len(last) + 1):
        if ".".join(last[-i:]) in parts:
            score = i
    return score


def onnx_values(prepared: onnx.ModelProto, names: list[str], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    index = GraphIndex.build(prepared.graph)
    values = {n: index.array(n) for n in names if n in index.initializers}
    computed = sorted({n for n in names if n not in values})
    graph_inputs = {v.name for v in prepared.graph.input}
    for n in computed:
        if n in graph_inputs:
            values[n] = batch[n]
    computed = [n for n in computed if n not in graph_inputs]
    if computed:
        got = run_named(make_session(prepared, outputs=computed), batch, "the example inputs")
        values.update({n: v for n, v in got.items() if n in computed})
    return values


def build_mapping(plan: QuantPlan, prepared: onnx.ModelProto, model: nn.Module, rec: Recording,
                  batch: dict[str, np.ndarray]) -> Mapping:
    mapping = Mapping()
    index = GraphIndex.build(prepared.graph)
    nodes = {node_name(n): n for n in prepared.graph.node}
    modules = dict(model.named_modules())
    _map_weights(plan, index, nodes, model, modules, rec, mapping)

    calibrated = plan.calibrated_activations()
    shared = [t for t in plan.activations() if t.shares_scale_with is not None]
    mapping.shared.update({t.name: t.shares_scale_with for t in shared if t.shares_scale_with is not None})
    # outputs of the Concat/data-movement nodes that read a shared tensor's Q/DQ: fake-quantized for every reader
    moved: dict[str, str] = {}  # ONNX tensor -> root
    for t in shared:
        root = t.shares_scale_with
        for c in t.consumers:
            for out in nodes[c.node].output:
                if out and root is not None:
                    moved.setdefault(out, root)
    wanted = {t.name for t in calibrated} | set(moved)
    for t in calibrated:
        for c in t.consumers:
            wanted.update(i for i in nodes[c.node].input if i)
    values = onnx_values(prepared, sorted(wanted), batch)

    param_owner = {s.tensor: s for s in mapping.weights.values()}
    problems: dict[str, list[str]] = {}
    for t in calibrated:
        sites = mapping.activations.setdefault(t.name, [])
        for c in t.consumers:
            node = nodes[c.node]
            weight = next((param_owner[i] for i in node.input if i in param_owner), None)
            module = weight.module if weight is not None else None
            if module is not None and rec.module_inputs.get(module) and c.input_index == 0:
                calls = [k for k, x in enumerate(rec.module_inputs[module])
                         if x is not None and _rel_err(x.cpu().numpy(), values[t.name]) <= ACT_TOL]
                if calls:
                    sites += [ActSite(t.name, c.node, "module", module, k, 0) for k in calls]
                else:
                    problems.setdefault(t.name, []).append(f"the input of module {module!r} does not equal it in torch")
                continue
            kinds = ONNX_TO_KINDS.get(node.op_type, ())
            if not kinds:
                problems.setdefault(t.name, []).append(
                    f"consumer {c.node!r} ({node.op_type}) has no mapped torch module or function")
                continue
            inputs = [values.get(i) for i in node.input]
            found = []
            for kind in kinds:
                for k, (args, _) in enumerate(rec.calls.get(kind, [])):
                    if kind == "linear":  # F.linear(x, W, b): only x is an activation (W^T in a MatMul)
                        hit = c.input_index == 0 and weight is not None and _args_match(list(args[:1]), inputs[:1])
                    else:
                        hit = _args_match(list(args), inputs)
                    if hit:
                        found.append(ActSite(t.name, c.node, kind, kind, k, c.input_index))
            if found:
                sites += [s for s in found if s not in sites]
            else:
                problems.setdefault(t.name, []).append(
                    f"no torch {' or '.join(kinds)} call has the inputs of {c.node!r}")
    for out, root in moved.items():
        found = [ActSite(root, out, "move", "move", k, j)
                 for k, (_, outs) in enumerate(rec.calls.get("move", [])) for j, o in enumerate(outs)
                 if o is not None and _rel_err(o.cpu().numpy(), values[out]) <= ACT_TOL]
        found += [ActSite(root, out, "module_out", name, k, j)
                  for name, calls in rec.leaf_outputs.items() for k, outs in enumerate(calls)
                  for j, o in enumerate(outs) if o is not None and _rel_err(o.cpu().numpy(), values[out]) <= ACT_TOL]
        if found:
            have = mapping.activations.setdefault(root, [])
            have += [s for s in found if s not in have]
        else:
            problems.setdefault(root, []).append(f"no torch data-movement call produces {out!r} (shares its scale)")
    for name, why in problems.items():
        text = "; ".join(why)
        if mapping.activations.get(name):
            log.warning("activation %r is only partly mapped: %s", name, text)
            mapping.unmapped[name] = f"partly mapped: {text}"
        else:
            mapping.unmapped[name] = text
    mapping.activations = {k: v for k, v in mapping.activations.items() if v}
    for name, root in mapping.shared.items():
        if root not in mapping.activations:
            mapping.unmapped[name] = f"shares the scale of unmapped {root!r}"
    if mapping.unmapped:
        log.warning("QAT mapping: %d planned tensor(s) unmapped: %s", len(mapping.unmapped),
                    ", ".join(list(mapping.unmapped)[:5]))
    return mapping


def _args_match(args: list, inputs: list) -> bool:
    if len(args) < len(inputs):
        return False
    for a, v in zip(args, inputs):
        if v is None or a is None:
            return False
        if _rel_err(a.cpu().numpy(), v) > ACT_TOL:
            return False
    return True


def _map_weights(plan: QuantPlan, index: GraphIndex, nodes: dict, model: nn.Module, modules: dict,
                 rec: Recording, mapping: Mapping) -> None:
    owner = {}
    for mname, m in modules.items():
        if isinstance(m, WEIGHTED):
            owner[f"{mname}.weight" if mname else "weight"] = mname
    candidates: dict[tuple[int, ...], list[tuple[str, bool, str | None, np.ndarray]]] = {}
    for pname, p in model.named_parameters():
        if not p.is_floating_point() or p.dim() < 1:
            continue
        w = p.detach().double().cpu().numpy()
        forms: list[tuple[bool, str | None, np.ndarray]] = [(False, None, w)]
        mname = owner.get(pname)
        bn_name = rec.bn_after.get(mname) if mname is not None else None
        if bn_name is not None:
            s = _bn_factor(modules[bn_name])
            if s is not None and s.size == _out_channels(modules[mname]):
                forms.append((False, bn_name, scale_output_channels(modules[mname], w, s)))
        for _, bn, arr in list(forms):
            if arr.ndim == 2:
                forms.append((True, bn, arr.T))
        for transposed, bn, arr in forms:
            candidates.setdefault(arr.shape, []).append((pname, transposed, bn, arr))

    for t in plan.weights():
        a = index.array(t.name).astype(np.float64)
        scored = [(err, pname, transposed, bn) for pname, transposed, bn, arr in candidates.get(a.shape, [])
                  if (err := _rel_err(arr, a)) <= WEIGHT_TOL]
        if not scored:
            mapping.unmapped[t.name] = "no torch parameter has these values (raw, transposed or BN-folded)"
            continue
        best = min(e for e, *_ in scored)
        scored = [s for s in scored if s[0] <= max(best * 10, 1e-7)]
        if len({s[1] for s in scored}) > 1:
            node = t.consumers[0].node if t.consumers else ""
            by_scope = sorted(scored, key=lambda s: -_scope_score(node, owner.get(s[1], s[1].rsplit(".", 1)[0])))
            top = _scope_score(node, owner.get(by_scope[0][1], ""))
            if top == 0 or top == _scope_score(node, owner.get(by_scope[1][1], "")):
                mapping.unmapped[t.name] = ("ambiguous: equal values in torch parameters "
                                            + ", ".join(sorted({s[1] for s in scored})))
                continue
            scored = by_scope[:1]
        _, pname, transposed, bn = min(scored)
        mname = owner.get(pname)
        axis = t.axis
        if axis is not None and transposed:
            axis = 1 - axis
        mapping.weights[t.name] = WeightSite(t.name, pname, mname, transposed, bn, axis)


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return int(module.out_channels)  # type: ignore[arg-type]  # a conv: an int attribute
