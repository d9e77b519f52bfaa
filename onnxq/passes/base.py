"""Pass infrastructure: a pass transforms a model and says what it did; a PassManager runs a sequence.

Modelled on onnx-ir's pass infrastructure (``onnx_ir/passes/_pass_infra.py``): ``Pass.call(model)`` returns a
:class:`PassResult`; an exception inside a pass is re-raised naming the pass and the passes that ran before it; the
model is checked after the sequence (and after every pass when ``debug`` is set).

Each pass declares what it does to its input, as onnx-ir's ``in_place`` / ``changes_input`` properties do:

* ``in_place``: the pass modifies the model it is given and returns that same object;
* ``changes_input``: the model given to :meth:`Pass.call` is modified (true for every in-place pass; a functional pass
  such as shape inference returns a new model and leaves its input alone).

:meth:`Pass.run` and :class:`PassManager` use it to copy a caller's model only when a pass would change it, and only
once per sequence; nobody deep-copies "just in case".
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import onnx

from onnxq.errors import OnnxqError
from onnxq.graph import check_model

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    model: onnx.ModelProto
    changed: bool
    notes: list[str] = field(default_factory=list)


class Pass(ABC):
    """One transformation of a model. Subclasses set ``name``, ``in_place`` and ``changes_input`` and implement
    :meth:`call`; a pass that declares nothing is assumed to change its input (the safe default)."""

    name: ClassVar[str] = "pass"
    in_place: ClassVar[bool] = True
    changes_input: ClassVar[bool] = True

    @abstractmethod
    def call(self, model: onnx.ModelProto) -> PassResult:
        """Transform ``model`` (modifying it when ``changes_input``); the result holds the transformed model."""

    def run(self, model: onnx.ModelProto, *, keep_input: bool = True) -> PassResult:
        """:meth:`call`, on a copy of ``model`` when the pass would change it and ``keep_input`` is set."""
        return self.call(copy_model(model) if keep_input and self.changes_input else model)


class InPlacePass(Pass):
    """A pass that modifies the model it is given and returns it (onnx-ir's ``InPlacePass``)."""

    in_place = True
    changes_input = True


class FunctionalPass(Pass):
    """A pass that returns a new model and leaves its input alone (onnx-ir's ``FunctionalPass``)."""

    in_place = False
    changes_input = False


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


class PassError(OnnxqError):
    """A pass failed; the message names it and the passes that ran before it."""


@dataclass
class PassManager:
    passes: list[Pass]
    debug: bool = False
    check: bool = True

    def run(self, model: onnx.ModelProto, *, keep_input: bool = True) -> tuple[onnx.ModelProto, list[PassResult]]:
        """Every pass in order. With ``keep_input`` the caller's model is never modified: it is copied once, before
        the first pass that changes its input while the model is still the caller's object."""
        results: list[PassResult] = []
        done: list[str] = []
        given = model
        for p in self.passes:
            if keep_input and p.changes_input and model is given:
                model = copy_model(model)
            try:
                result = p.call(model)
                if self.debug:
                    check_model(result.model, what=f"model after pass {p.name!r}")
            except OnnxqError as exc:
                raise PassError(f"pass {p.name!r} (after {done or 'none'}): {exc}") from exc
            except Exception as exc:
                raise RuntimeError(f"pass {p.name!r} failed (after {done or 'none'}): {exc}") from exc
            log.debug("pass %s: changed=%s %s", p.name, result.changed, "; ".join(result.notes))
            results.append(result)
            done.append(p.name)
            model = result.model
        if self.check:
            check_model(model, what=f"model after passes {done}")
        return model, results
