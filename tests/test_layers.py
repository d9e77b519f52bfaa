"""The package's import graph: no cycle, and no import from a lower layer to a higher one.

Layers, bottom to top (DESIGN.md "Layers", adjusted to the real package; an import may go down or stay level):

0. errors, version, atomic, outputs, safe_read, node_regex, findings, dtypes, formats, rules, scales.formats --
   pure data and helpers
1. graph, runtime, data, ops -- load/save/index, onnxruntime sessions, readers, per-op handlers; mask_tensors and
   padding_rows (which tensors carry an attention mask, which token rows are padding: calibration reads them)
2. calib -- statistics algorithms (know nothing of plans)
3. config, config_file, plan
4. scales, validate, report -- parameters and formats, metrics, the QuantReport the pipeline fills
5. passes (prepare, float -> float), insert (plan + scales -> Q/DQ)
6. pipeline, recovery, scales.qdq_keys (matches scales by running the prepare stage on two models)
7. handoff_report, inspect_model, trt, qat, models, compare, distributed -- optional dependencies and tools
8. commands, cli, the package's __init__ (lazy)

A new module needs a line in LAYERS (longest prefix wins); the failure message says which.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "onnxq"

LAYERS = {
    "onnxq.errors": 0, "onnxq.version": 0, "onnxq.progress": 0, "onnxq.atomic": 0, "onnxq.outputs": 0,
    "onnxq.safe_read": 0, "onnxq.node_regex": 0, "onnxq.findings": 0, "onnxq.dtypes": 0, "onnxq.rules": 0,
    "onnxq.formats": 0,
    "onnxq.scales.formats": 0,
    "onnxq.graph": 1, "onnxq.runtime": 1, "onnxq.data": 1, "onnxq.ops": 1, "onnxq.mask_tensors": 1,
    "onnxq.padding_rows": 1, "onnxq.gelu_pattern": 1,
    "onnxq.calib": 2,
    "onnxq.config": 3, "onnxq.config_file": 3, "onnxq.plan": 3, "onnxq.integer_region": 3, "onnxq.float_nodes": 3,
    "onnxq.short_maps": 3, "onnxq.empty_plan": 3,
    "onnxq.scales": 4, "onnxq.activation_bounds": 4, "onnxq.validate": 4, "onnxq.report": 4,
    "onnxq.passes": 5, "onnxq.insert": 5,
    "onnxq.pipeline": 6, "onnxq.dynamic": 6, "onnxq.recovery": 6, "onnxq.scales.qdq_keys": 6,
    "onnxq.rewritten_tensors": 6,
    "onnxq.handoff_report": 7, "onnxq.inspect_model": 7, "onnxq.trt": 7, "onnxq.qat": 7, "onnxq.models": 7,
    "onnxq.compare": 7, "onnxq.distributed": 7,
    "onnxq.commands": 8, "onnxq.cli": 8, "onnxq": 8,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    prefix = module
    while prefix:
        if prefix in LAYERS:
            return LAYERS[prefix]
        prefix = prefix.rpartition(".")[0]
    raise AssertionError(f"{module} has no layer: add it to LAYERS in tests/test_layers.py")


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def onnxq_imports(path: Path, modules: set[str]) -> set[str]:
    """The onnxq modules ``path`` imports (anywhere in the file, except under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = {id(n) for block in ast.walk(tree) if _type_checking_block(block) for n in ast.walk(block)}
    this = module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = this if path.name == "__init__.py" else this.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "onnxq" or n.startswith("onnxq."))
    found.discard(this)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): onnxq_imports(f, modules) for f in files}


def test_every_module_has_a_layer_and_imports_only_downwards():
    graph = import_graph()
    upward = [f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
              for src, targets in graph.items() for dst in sorted(targets) if layer(dst) > layer(src)]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for dst in sorted(graph.get(module, ())):
            if state.get(dst) == 1:
                return stack[stack.index(dst):] + [dst]
            if dst not in state and (cycle := visit(dst)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_parser_finds_the_imports():
    """The parser is not vacuous: known edges are found (a checker that sees nothing passes everything)."""
    graph = import_graph()
    assert "onnxq.plan" in graph["onnxq.pipeline"] and "onnxq.runtime" in graph["onnxq.calib.collect"]
    assert graph["onnxq.errors"] == set()
