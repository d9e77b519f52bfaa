"""Where a torch model's forward can be intercepted: weighted-module inputs (forward pre-hooks) and calls of
``matmul``/``add`` (a :class:`~torch.overrides.TorchFunctionMode`), each identified by its call index within one
forward pass. The same interception records values when the plan is mapped and applies fake quant in training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from onnxq.qat import attention

# torch function name -> the ONNX op it exports to (tensor-tensor only); ``F.linear`` (called by
# nn.MultiheadAttention and by models directly) exports as MatMul(+Add) or Gemm
FUNCTION_KINDS = {"matmul": "MatMul", "__matmul__": "MatMul", "bmm": "MatMul",
                  "add": "Add", "add_": "Add", "__add__": "Add", "__radd__": "Add", "__iadd__": "Add",
                  "linear": "Linear"}
# ONNX op of a planned tensor's consumer -> torch function kinds whose calls may be that node
ONNX_TO_KINDS = {"MatMul": ("matmul", "linear"), "Gemm": ("linear",), "Add": ("add",)}
_KIND = {"MatMul": "matmul", "Add": "add", "Linear": "linear"}
# functions that only move data (what onnxq's plan shares scales through: Concat and data-movement ops)
MOVE_FUNCTIONS = frozenset({
    "reshape", "view", "flatten", "unflatten", "transpose", "permute", "t", "squeeze", "unsqueeze", "cat", "concat",
    "concatenate", "stack", "__getitem__", "narrow", "chunk", "split", "tensor_split", "unbind", "contiguous",
    "expand", "expand_as", "repeat", "gather", "index_select", "take_along_dim", "movedim", "swapaxes", "flip",
    "max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool2d", "pad", "interpolate", "pixel_shuffle",
    "pixel_unshuffle", "clone", "reshape_as", "view_as",
})
# data movement whose outputs are values of its inputs (no arithmetic): outputs of fake-quantized inputs are already
# on their grid (interpolation, and padding with values other than zero, are not)
EXACT_MOVES = MOVE_FUNCTIONS - {"interpolate", "pad"}
WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)
BATCHNORM = nn.modules.batchnorm._BatchNorm


_KIND_OF: dict[Any, str | None] = {}  # torch function -> its kind, looked up once per function


def function_kind(func: Any) -> str | None:
    try:
        return _KIND_OF[func]
    except (KeyError, TypeError):
        pass
    name = getattr(func, "__name__", "")
    op = FUNCTION_KINDS.get(name)
    kind = "move" if name in MOVE_FUNCTIONS else _KIND.get(op) if op else None
    try:
        _KIND_OF[func] = kind
    except TypeError:  # unhashable callables are rare; look them up each time
        pass
    return kind


def is_in_place(func: Any) -> bool:
    """``add_``, ``__iadd__`` (``+=``, ``operator.iadd``): the call writes its result into its first argument."""
    name = getattr(func, "__name__", "")
    return name.startswith("__i") or (name.endswith("_") and not name.endswith("__"))


def float_outputs(out: Any) -> list[torch.Tensor | None]:
    """The outputs of a call as a list (chunk/split return several)."""
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    return [_float_or_none(o) for o in items]


CallHandler = Callable[[str, int, Any, tuple, dict], Any]


def _float_tensor_args(args: tuple) -> int:
    n = 0
    for a in args:
        if isinstance(a, (tuple, list)):
            n += _float_tensor_args(tuple(a))
        elif isinstance(a, torch.Tensor) and a.is_floating_point():
            n += 1
    return n


def is_library_leaf(module: nn.Module) -> bool:
    """A torch.nn module other than a container: calls inside it are the library's, not the model's.
    ``nn.MultiheadAttention`` is not one: its functional code (``F.linear``, reshapes, attention) is what the exporter
    writes op by op, and onnxq quantizes inside it."""
    cls = type(module)
    return cls.__module__.startswith("torch.nn.") and not isinstance(
        module, (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.MultiheadAttention))


class CallCounter(TorchFunctionMode):
    """Counts the model's own tensor-tensor matmul/add calls (with two floating-point tensor arguments, outside
    torch.nn library modules) while ``active``; hands each to ``handler(kind, index, func, args, kwargs)``."""

    def __init__(self, handler: CallHandler | None = None) -> None:
        super().__init__()
        self.handler = handler
        self.active = False
        self.paused = 0
        self.counts: Counter = Counter()

    def attach(self, model: nn.Module) -> list:
        """Pause counting inside library modules of ``model``; returns the hook handles."""
        handles = []
        for m in model.modules():
            if is_library_leaf(m):
                handles.append(m.register_forward_pre_hook(self._enter))
                handles.append(m.register_forward_hook(self._exit))
        return handles

    def _enter(self, module, args) -> None:
        self.paused += 1

    def _exit(self, module, args, output) -> None:
        self.paused = max(0, self.paused - 1)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.active or self.paused:
            return func(*args, **kwargs)
        # fused calls replaced by the operations they export as; the stand-ins' calls are the model's, so they run
        # with this mode on again (torch turns it off inside its own handler)
        if func is F.scaled_dot_product_attention and attention.supported(*args[3:], **kwargs):
            with self:
                return attention.sdpa_as_exported(*args, **kwargs)
        if func is F.multi_head_attention_forward and attention.mha_supported(*args, **kwargs):
            with self:
                return attention.mha_as_exported(*args, **kwargs)
        kind = function_kind(func)
        if kind is None or _float_tensor_args(args) < (1 if kind == "move" else 2):
            return func(*args, **kwargs)
        index = self.counts[kind]
        self.counts[kind] += 1
        if self.handler is None:
            return func(*args, **kwargs)
        return self.handler(kind, index, func, args, kwargs)


@dataclass
class Recording:
    """Values seen in one eval-mode forward pass of the float torch model."""

    module_inputs: dict[str, list[torch.Tensor | None]] = field(default_factory=dict)  # module -> input 0 per call
    # kind -> per call: (float tensor arguments, float outputs); "move" calls keep only their outputs
    calls: dict[str, list[tuple[tuple[torch.Tensor | None, ...], list[torch.Tensor | None]]]] = field(
        default_factory=dict)
    bn_after: dict[str, str] = field(default_factory=dict)  # weighted module -> the BN that reads its output
    # torch.nn library module (MaxPool2d, Flatten, Upsample, ...) -> per call: its float outputs
    leaf_outputs: dict[str, list[list[torch.Tensor | None]]] = field(default_factory=dict)
    outputs: Any = None


def _float_or_none(x: Any) -> torch.Tensor | None:
    return x.detach().clone() if isinstance(x, torch.Tensor) and x.is_floating_point() else None


def record(model: nn.Module, args: tuple) -> Recording:
    """Run ``model(*args)`` once (no grad) and record weighted-module inputs, BN pairing and matmul/add calls."""
    rec = Recording()
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    handles = []

    def pre_hook(name):
        def hook(module, inputs):
            was, counter.active = counter.active, False  # our clone() is not the model's call
            rec.module_inputs.setdefault(name, []).append(_float_or_none(inputs[0]) if inputs else None)
            counter.active = was
        return hook

    def out_hook(name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor):
                produced[id(output)] = (name, output)  # keep the tensor alive so its id stays unique
        return hook

    def bn_hook(name):
        def hook(module, inputs):
            src = produced.get(id(inputs[0])) if inputs else None
            if src is not None and src[1] is inputs[0]:
                rec.bn_after.setdefault(src[0], name)
        return hook

    def on_call(kind, index, func, call_args, kwargs):
        kept = () if kind == "move" else tuple(_float_or_none(a) for a in call_args)  # before an in-place op
        out = func(*call_args, **kwargs)
        rec.calls.setdefault(kind, []).append((kept, float_outputs(out)))
        return out

    def leaf_out_hook(name):
        def hook(module, inputs, output):
            was, counter.active = counter.active, False
            rec.leaf_outputs.setdefault(name, []).append(float_outputs(output))
            counter.active = was
        return hook

    counter = CallCounter(on_call)
    for name, module in model.named_modules():
        if isinstance(module, WEIGHTED):
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(out_hook(name)))
        elif isinstance(module, BATCHNORM):
            handles.append(module.register_forward_pre_hook(bn_hook(name)))
        if is_library_leaf(module) and not isinstance(module, WEIGHTED):
            handles.append(module.register_forward_hook(leaf_out_hook(name)))
    root_hooks = [model.register_forward_pre_hook(lambda m, a: setattr(counter, "active", True)),
                  model.register_forward_hook(lambda m, a, o: setattr(counter, "active", False))]
    root_hooks += counter.attach(model)
    try:
        with torch.no_grad(), attention.no_mha_fastpath(), counter:
            rec.outputs = model(*args)
    finally:
        for h in handles + root_hooks:
            h.remove()
    return rec
