"""Pass infrastructure: a pass transforms a model and says what it did; a PassManager runs a sequence.

Modelled on onnx-ir's pass infrastructure: ``Pass.call(model)`` returns a :class:`PassResult`; an exception inside
a pass is re-raised naming the pass and the passes that ran before it; the model is checked after the sequence
(and after every pass when ``debug`` is set).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

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
    """One transformation of a model. Subclasses set ``name`` and implement :meth:`call`."""

    name: str = "pass"

    @abstractmethod
    def call(self, model: onnx.ModelProto) -> PassResult: ...


class PassError(OnnxqError):
    """A pass failed; the message names it and the passes that ran before it."""


@dataclass
class PassManager:
    passes: list[Pass]
    debug: bool = False
    check: bool = True

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[PassResult]]:
        results: list[PassResult] = []
        done: list[str] = []
        for p in self.passes:
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
