"""Input shapes for engine building: ``--shapes x:1x3x640x640`` parsing and min/opt/max optimization profiles.

The spec syntax is trtexec's: comma-separated ``name:DxDxD`` entries; the name is everything before the last colon
(so names containing ``:`` work), and a name may be quoted with single quotes. An ONNX input with a symbolic or
unknown dimension is dynamic: TensorRT needs an optimization profile for it, so it must be given a shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import onnx

from onnxq.data import model_inputs
from onnxq.errors import OnnxqError

Shape = tuple[int, ...]
Dims = tuple[int | None, ...]  # None: dynamic (symbolic or unknown) dimension


def parse_shapes(specs: str | Iterable[str] | None, option: str = "--shapes") -> dict[str, Shape]:
    """``"x:1x3x640x640,y:1x10"`` (or several such strings) -> ``{"x": (1, 3, 640, 640), "y": (1, 10)}``."""
    if specs is None:
        return {}
    if isinstance(specs, str):
        specs = [specs]
    shapes: dict[str, Shape] = {}
    for spec in specs:
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            name, sep, dims = item.rpartition(":")
            name = name.strip().strip("'")
            if not sep or not name:
                raise OnnxqError(f"{option}: expected name:DxDxD (e.g. x:1x3x640x640), got {item!r}")
            try:
                shape = tuple(int(d) for d in dims.lower().split("x")) if dims.strip() else ()
            except ValueError as exc:
                raise OnnxqError(f"{option}: dimensions of {name!r} must be integers separated by 'x', "
                                 f"got {dims!r}") from exc
            if any(d < 0 for d in shape):
                raise OnnxqError(f"{option}: dimensions of {name!r} must be >= 0, got {dims!r}")
            if name in shapes:
                raise OnnxqError(f"{option}: input {name!r} given twice")
            shapes[name] = shape
    return shapes


def format_shape(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


def format_shapes(shapes: Mapping[str, Shape]) -> str:
    return ",".join(f"{_quote(name)}:{format_shape(s)}" for name, s in shapes.items())


def _quote(name: str) -> str:
    return f"'{name}'" if any(c in name for c in ",:' ") else name


def input_dims(model: onnx.ModelProto) -> dict[str, Dims]:
    """Real graph inputs (:func:`onnxq.data.model_inputs`) and their dims, None where dynamic (an input of unknown
    rank has no dims; it is treated as dynamic)."""
    return {spec.name: tuple(d if isinstance(d, int) else None for d in spec.shape) for spec in model_inputs(model)}


def is_dynamic(dims: Dims, has_shape: bool = True) -> bool:
    return not has_shape or any(d is None for d in dims)


@dataclass(frozen=True)
class Profile:
    """min/opt/max shapes of every input that needs them (an optimization profile)."""

    min: dict[str, Shape]
    opt: dict[str, Shape]
    max: dict[str, Shape]

    @property
    def empty(self) -> bool:
        return not self.opt

    def inputs(self) -> list[str]:
        return list(self.opt)


def build_profile(model: onnx.ModelProto, shapes: Mapping[str, Shape] | None = None,
                  min_shapes: Mapping[str, Shape] | None = None,
                  max_shapes: Mapping[str, Shape] | None = None) -> Profile:
    """An optimization profile for ``model``'s inputs.

    ``shapes`` is the opt shape (also min and max unless those are given). Every dynamic input needs a shape; a given
    shape must match the input's rank and its static dimensions, and min <= opt <= max per dimension. Static inputs
    may be left out (TensorRT needs no profile entry for them).
    """
    shapes, min_shapes, max_shapes = dict(shapes or {}), dict(min_shapes or {}), dict(max_shapes or {})
    inputs = input_dims(model)
    typed = {v.name: v.type.tensor_type.HasField("shape") for v in model.graph.input}
    for option, given in (("--shapes", shapes), ("--min-shapes", min_shapes), ("--max-shapes", max_shapes)):
        unknown = sorted(set(given) - set(inputs))
        if unknown:
            raise OnnxqError(f"{option}: {', '.join(map(repr, unknown))} not an input of the model "
                             f"(inputs: {', '.join(inputs) or 'none'})")
    for name in set(min_shapes) | set(max_shapes):
        if name not in shapes:
            raise OnnxqError(f"input {name!r} has --min-shapes/--max-shapes but no --shapes (the opt shape)")
    dynamic = [n for n, dims in inputs.items() if is_dynamic(dims, typed.get(n, True))]
    missing = [n for n in dynamic if n not in shapes]
    if missing:
        described = ", ".join(f"{n} {_describe(inputs[n], typed.get(n, True))}" for n in missing)
        example = ",".join(f"{n}:{_example(inputs[n])}" for n in missing)
        raise OnnxqError(f"dynamic input(s) need a shape for the TensorRT optimization profile: {described}; "
                         f"pass e.g. --shapes {example}")
    profile = Profile({}, {}, {})
    for name, opt in shapes.items():
        lo, hi = min_shapes.get(name, opt), max_shapes.get(name, opt)
        dims = inputs[name]
        for label, shape in (("--min-shapes", lo), ("--shapes", opt), ("--max-shapes", hi)):
            if typed.get(name, True) and len(shape) != len(dims):
                raise OnnxqError(f"{label}: input {name!r} has rank {len(dims)} but the shape "
                                 f"{format_shape(shape)} has rank {len(shape)}")
            for axis, (fixed, d) in enumerate(zip(dims, shape)):
                if fixed is not None and d != fixed:
                    raise OnnxqError(f"{label}: input {name!r} dimension {axis} is fixed at {fixed} in the model, "
                                     f"got {d}")
        if not (len(lo) == len(opt) == len(hi)) or any(a > b for a, b in zip(lo, opt)) or any(
                b > c for b, c in zip(opt, hi)):
            raise OnnxqError(f"input {name!r}: need min <= opt <= max in every dimension, got min "
                             f"{format_shape(lo)}, opt {format_shape(opt)}, max {format_shape(hi)}")
        profile.min[name], profile.opt[name], profile.max[name] = lo, opt, hi
    return profile


def _describe(dims: Dims, has_shape: bool) -> str:
    if not has_shape:
        return "(unknown rank)"
    return "(" + "x".join("?" if d is None else str(d) for d in dims) + ")"


def _example(dims: Dims) -> str:
    return "x".join("1" if d is None else str(d) for d in dims) if dims else "1"
