"""``QATModel``: the user's torch model with onnxq's plan applied as fake quant.

The wrapped model is not modified or copied: its parameters are trained in place. Weights are fake-quantized
before each forward and passed in with :func:`torch.func.functional_call` (BN-folded weights as ``fq(W * s) / s``
so that the BatchNorm after them, in either mode, sees ``fq`` of the folded weight); activations are fake-quantized
by forward pre-hooks on the mapped modules and by a TorchFunctionMode on the mapped ``matmul``/``add`` calls. Both
only act inside ``QATModel.forward``: calling the wrapped model directly runs it in float.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import onnx
import torch
from torch import nn
from torch.func import functional_call

from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.plan import QuantPlan
from onnxq.qat.attention import no_mha_fastpath
from onnxq.qat.fake_quant import ActQuantizer, WeightQuantizer
from onnxq.qat.mapping import Mapping, divide_output_channels, scale_output_channels
from onnxq.qat.structure import GraphStructure
from onnxq.qat.trace import BATCHNORM, EXACT_MOVES, CallCounter, is_in_place
from onnxq.scales.types import ScaleTable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportSpec:
    """How the torch model is exported to ONNX, at :func:`onnxq.qat.prepare` and again at :func:`onnxq.qat.export`
    (legacy TorchScript exporter, ``do_constant_folding`` on, eval mode)."""

    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    opset: int = 17
    dynamic_batch: bool = True


@dataclass
class QATState:
    """What :func:`onnxq.qat.prepare` learned about the model, kept for :func:`onnxq.qat.export`."""

    config: QuantConfig
    spec: ExportSpec
    plan: QuantPlan
    ptq_scales: ScaleTable
    structure: GraphStructure  # of the prepared graph: a re-export must have the same
    example_inputs: tuple[torch.Tensor, ...]
    prepared: onnx.ModelProto
    expected_calls: dict[str, int] = field(default_factory=dict)
    expected_module_calls: dict[str, int] = field(default_factory=dict)


class QATModel(nn.Module):
    """The user's torch model with fake quant where onnxq's plan quantizes (see onnxq.qat.prepare)."""

    act_quantizers: nn.ModuleList
    weight_quantizers: nn.ModuleList

    def __init__(self, model: nn.Module, mapping: Mapping, state: QATState, *, learn_scales: bool = False,
                 weight_scales: str = "dynamic") -> None:
        super().__init__()
        self.model = model
        self.mapping = mapping
        self.state = state
        table = state.ptq_scales
        self.act_names = sorted(mapping.activations)
        self.act_quantizers = nn.ModuleList(ActQuantizer(n, table[n], learn_scales) for n in self.act_names)
        self.weight_sites = [mapping.weights[n] for n in sorted(mapping.weights)]
        self.weight_quantizers = nn.ModuleList(
            WeightQuantizer(s.tensor, table[s.tensor], s.torch_axis, weight_scales) for s in self.weight_sites)
        position = {n: i for i, n in enumerate(self.act_names)}
        self._module_sites: dict[tuple[str, int], int] = {}
        self._out_sites: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self._func_sites: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for name, sites in mapping.activations.items():
            for s in sites:
                if s.kind == "module":
                    self._module_sites[(s.target, s.call)] = position[name]
                elif s.kind == "module_out":
                    self._out_sites.setdefault((s.target, s.call), []).append((s.arg, position[name]))
                else:
                    self._func_sites.setdefault((s.kind, s.call), []).append((s.arg, position[name]))
        self._quant = True
        self._active = False
        # id -> (quantizer, tensor, its version) of this forward's fake-quant outputs and exact moves of them
        self._on_grid: dict[int, tuple[int, torch.Tensor, int]] = {}
        self._bn_frozen = False
        self._module_calls: Counter = Counter()
        self._counter = CallCounter(self._on_call)
        # the function mode (and its pause hooks on every torch.nn module) only where function sites need it: a
        # Python call per torch function is the largest fixed cost of a QAT step on small models
        self._uses_mode = bool(self._func_sites)
        self._hooks = []
        if self._uses_mode:
            self._hooks += [model.register_forward_pre_hook(self._root_enter),
                            model.register_forward_hook(self._root_exit)]
            self._hooks += self._counter.attach(model)
        modules = dict(model.named_modules())
        for name in sorted({s.target for v in mapping.activations.values() for s in v if s.kind == "module"}):
            self._hooks.append(modules[name].register_forward_pre_hook(self._module_hook(name)))
        for name in sorted({name for name, _ in self._out_sites}):
            self._hooks.append(modules[name].register_forward_hook(self._module_out_hook(name)))

    # -- switches -------------------------------------------------------------------------------------------------
    def enable_quant(self, enabled: bool = True) -> QATModel:
        """Turn all fake quant on or off (off: the float model, e.g. for warm-up epochs)."""
        self._quant = enabled
        return self

    @property
    def quant_enabled(self) -> bool:
        return self._quant

    @contextlib.contextmanager
    def float_mode(self) -> Iterator[None]:
        previous = self._quant
        self._quant = False
        try:
            yield
        finally:
            self._quant = previous

    def freeze_bn(self) -> QATModel:
        """Use (and stop updating) the BatchNorm running statistics from now on, also after ``train()``."""
        self._bn_frozen = True
        self._apply_bn_freeze()
        return self

    def _apply_bn_freeze(self) -> None:
        if self._bn_frozen:
            for m in self.model.modules():
                if isinstance(m, BATCHNORM):
                    m.eval()

    def train(self, mode: bool = True) -> QATModel:
        super().train(mode)
        self._apply_bn_freeze()
        return self

    def remove_hooks(self) -> None:
        """Detach from the wrapped model (its forward no longer has any hook of ours)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- forward --------------------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self._quant:
            return self.model(*args, **kwargs)
        overrides = self.quantized_weights()
        self._module_calls.clear()
        self._on_grid.clear()
        self._counter.counts.clear()
        self._counter.paused = 0
        self._active = True
        try:
            with no_mha_fastpath(), (self._counter if self._uses_mode else contextlib.nullcontext()):
                out = functional_call(self.model, overrides, args, kwargs, strict=False)
        finally:
            self._active = False
            self._counter.active = False
            self._on_grid.clear()
        self._check_calls()
        return out

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        modules = dict(self.model.named_modules())
        out = {}
        for site, q in zip(self.weight_sites, self.weight_quantizers):
            p = self.model.get_parameter(site.param)
            if site.bn is None:
                out[site.param] = q(p)
                continue
            module, bn = modules[site.module], modules[site.bn]
            s = bn_factor(bn)
            out[site.param] = divide_output_channels(module, q(scale_output_channels(module, p, s)), s)
        return out

    def _root_enter(self, module, args) -> None:
        self._counter.active = self._active

    def _root_exit(self, module, args, output) -> None:
        self._counter.active = False

    def _module_hook(self, name: str):
        def hook(module, inputs):
            if not self._active or not inputs:
                return None
            k = self._module_calls[name]
            self._module_calls[name] += 1
            qi = self._module_sites.get((name, k))
            if qi is None:
                return None
            was, self._counter.active = self._counter.active, False
            try:
                x = self._quantize(qi, inputs[0])
            finally:
                self._counter.active = was
            return (x, *inputs[1:])
        return hook

    def _grid_of(self, args: tuple) -> int | None:
        """The quantizer whose output every floating-point tensor argument is, or None."""
        found = None
        for a in args:
            items = a if isinstance(a, (tuple, list)) else (a,)
            for t in items:
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    seen = self._on_grid.get(id(t))
                    # the same tensor, not modified in place since (an in-place op bumps its version)
                    if (seen is None or seen[1] is not t or seen[2] != t._version
                            or (found is not None and seen[0] != found)):
                        return None
                    found = seen[0]
        return found

    def _module_out_hook(self, name: str):
        def hook(module, inputs, output):
            if not self._active:
                return None
            k = self._module_calls[("out", name)]
            self._module_calls[("out", name)] += 1
            sites = self._out_sites.get((name, k))
            if sites is None:
                return None
            was, self._counter.active = self._counter.active, False
            try:
                return self._quantize_outputs(output, sites)
            finally:
                self._counter.active = was
        return hook

    def _quantize_outputs(self, out: Any, sites: list[tuple[int, int]]) -> Any:
        if isinstance(out, torch.Tensor):
            return self._quantize(sites[0][1], out)
        items = list(out)
        for j, qi in sites:
            items[j] = self._quantize(qi, items[j])
        return type(out)(items) if isinstance(out, tuple) else items

    def _quantize(self, qi: int, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` with quantizer ``qi``, unless it already is the output of that quantizer (or of exact
        data movement of it): fake quant with one scale is idempotent, forward and backward (every value of its
        output lies inside the range, so the straight-through mask is all ones)."""
        if self._grid_of((x,)) == qi:
            return x
        y = self.act_quantizers[qi](x)
        if self.act_quantizers[qi].enabled:
            self._on_grid[id(y)] = (qi, y, y._version)
        return y

    def _on_call(self, kind: str, index: int, func, args: tuple, kwargs: dict) -> Any:
        sites = self._func_sites.get((kind, index))
        if not sites:
            return func(*args, **kwargs)
        if kind == "move":
            out = func(*args, **kwargs)
            qi = self._grid_of(args) if getattr(func, "__name__", "") in EXACT_MOVES else None
            if qi is not None and all(q == qi for _, q in sites):  # moved values of one quantizer: on its grid
                for o in (out if isinstance(out, (tuple, list)) else (out,)):
                    if isinstance(o, torch.Tensor):
                        self._on_grid[id(o)] = (qi, o, o._version)
                return out
            return self._quantize_outputs(out, sites)
        call_args = list(args)
        in_place = is_in_place(func)
        for arg, qi in sites:
            if arg < len(call_args) and isinstance(call_args[arg], torch.Tensor):
                if arg == 0 and in_place:
                    # ``out += identity`` / ``out.add_(y)``: the model keeps using ``out``, so it must hold the
                    # result; quantize a copy (autograd may not save the tensor about to be overwritten), write it
                    # back, then let the in-place op run on it
                    call_args[0].copy_(self.act_quantizers[qi](call_args[0].clone()))
                else:
                    call_args[arg] = self._quantize(qi, call_args[arg])
        return func(*call_args, **kwargs)

    def _check_calls(self) -> None:
        kinds = {k for k, _ in self._func_sites}
        for kind in kinds:
            if self._counter.counts[kind] != self.state.expected_calls.get(kind, 0):
                raise OnnxqError(
                    f"this forward made {self._counter.counts[kind]} {kind} call(s), the mapping run "
                    f"{self.state.expected_calls.get(kind, 0)}: the model's control flow changed (train vs eval, input "
                    "shape?), so the fake quant of function sites would land on the wrong calls")
        checked = {(name, name) for name, _ in self._module_sites} | {(("out", name), name) for name, _ in
                                                                        self._out_sites}
        for key, name in checked:
            expected = self.state.expected_module_calls.get(name, 0)
            if self._module_calls[key] != expected:
                raise OnnxqError(f"module {name!r} ran {self._module_calls[name]} time(s) in this forward, "
                                 f"{expected} in the mapping run; its fake quant would land on the wrong call")

    # -- scales ---------------------------------------------------------------------------------------------------
    def scale_table(self) -> ScaleTable:
        """The scales of every planned tensor, keyed by ONNX tensor name, in plan order: learned (or dynamic) for
        mapped tensors, the PTQ scale for unmapped activations; unmapped weights are left out (onnxq computes their
        per-channel min-max scales from the exported values)."""
        table: ScaleTable = {}
        with torch.no_grad():
            for name, q in zip(self.act_names, self.act_quantizers):
                table[name] = cast(ActQuantizer, q).params()
            modules = dict(self.model.named_modules())
            for site, q in zip(self.weight_sites, self.weight_quantizers):
                p = self.model.get_parameter(site.param)
                w = p if site.bn is None else scale_output_channels(modules[site.module], p,
                                                                    bn_factor(modules[site.bn]))
                table[site.tensor] = cast(WeightQuantizer, q).params(w)
        plan = self.state.plan
        out: ScaleTable = {}
        for t in plan.tensors.values():
            if t.name in table:
                out[t.name] = table[t.name]
            elif t.role == "activation" and t.shares_scale_with is not None:
                root = t.shares_scale_with
                out[t.name] = table.get(root, self.state.ptq_scales[root])
            elif t.role == "activation":
                out[t.name] = self.state.ptq_scales[t.name]
        return out


def bn_factor(bn: nn.Module) -> torch.Tensor:
    """gamma / sqrt(running_var + eps): differentiable in gamma, running statistics detached; never zero."""
    var = torch.as_tensor(bn.running_var).detach()
    gamma = torch.as_tensor(bn.weight) if bn.weight is not None else torch.ones_like(var)
    s = gamma / torch.sqrt(var + float(bn.eps))  # type: ignore[arg-type]  # a BatchNorm: eps is a float
    tiny = torch.finfo(s.dtype).tiny
    return torch.where(s.abs() < tiny, torch.full_like(s, tiny), s)


def as_numpy_batch(names: list[str], inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {n: x.detach().cpu().numpy() for n, x in zip(names, inputs)}
