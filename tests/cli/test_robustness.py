"""Bad and unusual inputs on the CLI, one row per class (issue #10): the expected exit code, exactly one line on
stderr for a refusal, nothing written, and every input file byte-identical afterwards.

Each row builds its case inside a copy of a small workspace (a float CNN, its data, a scales file, a model with
external data) and runs ``onnxq.cli.main(argv)`` in-process; the SIGTERM row needs a real process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxq.cli import main
from tests.conftest import small_cnn
from tests.helpers import make_model

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


# ----------------------------------------------------------------------------------------------------------- workspace

@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """model.onnx, ext.onnx + ext.onnx.data, calib/ (.npy), val/ (.npz), stack.npz, scales.json (valid)."""
    ws = tmp_path_factory.mktemp("template")
    model = small_cnn()
    onnx.save(model, ws / "model.onnx")
    onnx.save(model, ws / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    rng = np.random.default_rng(0)
    (ws / "calib").mkdir()
    (ws / "val").mkdir()
    for i in range(3):
        np.save(ws / "calib" / f"{i}.npy", rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    np.savez(ws / "val" / "0.npz", x=rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    np.savez(ws / "stack.npz", x=rng.standard_normal((4, 3, 16, 16)).astype(np.float32))
    code, _, err = _run(["quantize", str(ws / "model.onnx"), "--calib", str(ws / "calib"), "-o",
                         str(ws / "q.onnx")])
    assert code == 0, err
    code, _, err = _run(["export-scales", str(ws / "q.onnx"), "--format", "json", "-o", str(ws / "scales.json")])
    assert code == 0, err
    code, _, err = _run(["calibrate", str(ws / "model.onnx"), "--calib", str(ws / "calib"), "-o",
                         str(ws / "stats.npz")])
    assert code == 0, err
    return ws


@pytest.fixture
def ws(template, tmp_path) -> Path:
    work = tmp_path / "ws"
    shutil.copytree(template, work, symlinks=True)
    return work


class _Capture:
    def __init__(self) -> None:
        self.err: list[str] = []


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``onnxq.cli.main`` in-process with a fresh stderr log handler (as a real run has), stdout/stderr captured at
    the file-descriptor level (onnxruntime writes from C++)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    warn_logger = logging.getLogger("py.warnings")
    saved_warn_level = warn_logger.level
    out, err = io.StringIO(), io.StringIO()
    root.handlers = []
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse usage errors
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        warn_logger.setLevel(saved_warn_level)
        logging.captureWarnings(False)
    return code, out.getvalue(), err.getvalue()


def _run_process(argv: list[str]) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-m", "onnxq.cli", *argv], capture_output=True, text=True, env=env,
                          timeout=120)
    return done.returncode, done.stdout, done.stderr


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: file content hashes, symlink targets, folders, FIFOs."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            found[rel] = "link:" + os.readlink(path)
        elif path.is_fifo():
            found[rel] = "fifo"
        elif path.is_dir():
            found[rel] = "dir"
        else:
            try:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            except PermissionError:
                found[rel] = "unreadable"
    return found


# ------------------------------------------------------------------------------------------------------------- cases

@dataclass
class Case:
    """One class of bad input. ``argv(ws)`` may create files in the workspace and returns the arguments."""

    name: str
    argv: Callable[[Path], list[str]]
    match: str
    code: int = 2
    writes: tuple[str, ...] = ()  # files a successful run may create
    skip_root: bool = False
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    max_seconds: float = 60
    #: run as a real process: onnxruntime and RE2 write from C++ to file descriptor 2, which only a real
    #: process's stderr shows
    process: bool = False


def q(ws: Path, *extra: str, model: str = "model.onnx") -> list[str]:
    return ["quantize", str(ws / model), "--calib", str(ws / "calib"), *extra]


def _symlink(ws: Path, target: str, name: str) -> str:
    os.symlink(ws / target, ws / name)
    return str(ws / name)


def _hardlink(ws: Path, target: str, name: str) -> str:
    os.link(ws / target, ws / name)
    return str(ws / name)


def _fifo(ws: Path, name: str) -> str:
    os.mkfifo(ws / name)
    return str(ws / name)


def _write(ws: Path, name: str, data: bytes | str) -> str:
    path = ws / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


def _scales_doc(ws: Path) -> dict:
    return json.loads((ws / "scales.json").read_text())


def _scales_with(ws: Path, name: str, edit: Callable[[dict], None]) -> str:
    doc = _scales_doc(ws)
    edit(doc)
    return _write(ws, name, json.dumps(doc))


def _first_activation(doc: dict) -> str:
    return next(n for n, e in doc["tensors"].items() if e.get("role") == "activation" and e["axis"] is None)


def _weight(doc: dict) -> str:
    return next(n for n, e in doc["tensors"].items() if e["axis"] is not None)


def _bad_stats(ws: Path, name: str, edit: Callable[[dict, dict], None]) -> str:
    with np.load(ws / "stats.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    edit(meta, arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(ws / name, **arrays)
    return str(ws / name)


def _nan_stats(meta: dict, arrays: dict) -> None:
    key = next(k for k in arrays if k.endswith("/hi"))
    arrays[key] = np.array(np.nan)


def _npy_with_header(ws: Path, name: str, shape: tuple[int, ...], payload: int = 64) -> str:
    """A .npy whose header declares ``shape`` but which stores only ``payload`` bytes."""
    import io

    from numpy.lib import format as npy_format

    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    (ws / "bigdata").mkdir(exist_ok=True)
    return _write(ws, f"bigdata/{name}", buf.getvalue() + b"\0" * payload)


def _zip_bomb(ws: Path) -> str:
    """An .npz whose one member declares (1, 3, 16, 16 * 2**20) float32: 200 MB compressing to a few hundred KB;
    under a lowered per-array limit it must be refused from its header."""
    import zipfile

    from numpy.lib import format as npy_format

    (ws / "bomb").mkdir()
    path = ws / "bomb" / "0.npz"
    header = {"descr": "<f4", "fortran_order": False, "shape": (1, 3, 16, 16 * 2**10)}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z, z.open("x.npy", "w") as f:
        npy_format.write_array_header_1_0(f, header)
        f.write(b"\0" * (3 * 16 * 16 * 2**10 * 4))
    return str(ws / "bomb")


def _deep_json(depth: int = 100_000) -> str:
    return '{"format": "onnxq-scales", "version": 1, "tensors": ' + "[" * depth + "]" * depth + "}"


def _model_with(ws: Path, name: str, mutate: Callable[[onnx.ModelProto], None]) -> str:
    model = small_cnn()
    mutate(model)
    onnx.save(model, ws / name)
    return str(ws / name)


def _undefined_input_type(model: onnx.ModelProto) -> None:
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UNDEFINED


def _control_chars(model: onnx.ModelProto) -> None:
    old = model.graph.input[0].name
    new = "x\x1b[31m\n\rred"
    model.graph.input[0].name = new
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new


def _ext_escape(ws: Path) -> str:
    """ext2.onnx whose external-data file is a symlink to a file outside the model's folder."""
    (ws / "sub").mkdir()
    (ws / "outside.bin").write_bytes((ws / "ext.onnx.data").read_bytes())
    model = onnx.load(ws / "ext.onnx", load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "w.data"
    onnx.save(model, ws / "sub" / "ext2.onnx")
    os.symlink(ws / "outside.bin", ws / "sub" / "w.data")
    return str(ws / "sub" / "ext2.onnx")


def _ext_location(ws: Path, location: str) -> str:
    model = onnx.load(ws / "ext.onnx", load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(model, ws / "ext3.onnx")
    return str(ws / "ext3.onnx")


def _opset7(ws: Path) -> str:
    """A valid opset-7 model (Conv -> Relu -> Gemm-free MatMul)."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, (4, 3, 3, 3), rng.standard_normal(108).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 16, 16])], [w])
    model = make_model(graph, opset=7)
    model.ir_version = 3
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]))
    onnx.checker.check_model(model)
    onnx.save(model, ws / "opset7.onnx")
    return str(ws / "opset7.onnx")


def _ort_rejects(ws: Path) -> str:
    """Passes the ONNX checker, but onnxruntime has no kernel for it (an op of an unknown domain)."""
    model = small_cnn()
    model.graph.node.append(helper.make_node("Mystery", ["logits"], ["out2"], name="mystery", domain="com.example"))
    model.graph.output[0].name = "out2"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(model, ws / "ortbad.onnx")
    return str(ws / "ortbad.onnx")


def _ort_fails_at_run(ws: Path) -> list[str]:
    """A MatMul with a dynamic inner dimension fed data of the wrong width: onnxruntime fails while running and
    would print its own coloured "[E:onnxruntime:...]" line at its default log severity."""
    w = onnx.numpy_helper.from_array(np.ones((4, 8), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "K"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w])
    onnx.save(make_model(graph), ws / "mm.onnx")
    (ws / "wide").mkdir()
    np.save(ws / "wide" / "0.npy", np.ones((2, 5), np.float32))
    return ["quantize", str(ws / "mm.onnx"), "--calib", str(ws / "wide"), "-o", str(ws / "mm.q.onnx")]


def _many_unknown(ws: Path) -> str:
    def edit(doc):
        for i in range(5000):
            doc["tensors"][f"unknown_{i}"] = {"dtype": "int8", "axis": None, "scale": 0.1, "zero_point": 0}
    return _scales_with(ws, "many.json", edit)


def _set_limit(module: str, name: str, value: int) -> Callable[[pytest.MonkeyPatch], None]:
    def patch(mp: pytest.MonkeyPatch) -> None:
        import importlib

        mp.setattr(importlib.import_module(module), name, value)
    return patch


CASES = [
    # 2. never write over an input, all outputs checked up front, in one place
    Case("o-is-input", lambda ws: q(ws, "-o", str(ws / "model.onnx")), "refusing to overwrite the input model"),
    Case("o-symlink-to-input", lambda ws: q(ws, "-o", _symlink(ws, "model.onnx", "link.onnx")), "refusing"),
    Case("o-hardlink-of-input", lambda ws: q(ws, "-o", _hardlink(ws, "model.onnx", "hard.onnx")), "refusing"),
    Case("o-dotdot-to-input", lambda ws: q(ws, "-o", str(ws / "calib" / ".." / "model.onnx")), "refusing"),
    Case("o-is-external-data", lambda ws: q(ws, "-o", str(ws / "ext.onnx.data"), model="ext.onnx"), "refusing"),
    Case("o-external-data-beside-is-input",
         lambda ws: ["quantize", str(ws / "ext.onnx"), "--calib", str(ws / "calib"), "-o", str(ws / "ext.onnx")],
         "refusing"),
    Case("report-is-input", lambda ws: q(ws, "-o", str(ws / "o.onnx"), "--report", str(ws / "model.onnx")),
         "--report: refusing"),
    Case("report-is-calib-data", lambda ws: q(ws, "-o", str(ws / "o.onnx"), "--report",
                                              str(ws / "calib" / "0.npy")), "refusing"),
    Case("report-missing-folder", lambda ws: q(ws, "-o", str(ws / "o.onnx"), "--report", str(ws / "nope" / "r.json")),
         "--report: output folder does not exist"),
    Case("report-equals-o", lambda ws: q(ws, "-o", str(ws / "o.onnx"), "--report", str(ws / "o.onnx")),
         "name the same file"),
    Case("o-empty", lambda ws: q(ws, "-o", ""), "-o: the output path is empty"),
    Case("o-is-directory", lambda ws: q(ws, "-o", str(ws / "calib")), "is a directory"),
    Case("o-parent-is-file", lambda ws: q(ws, "-o", str(ws / "model.onnx" / "x.onnx")), "is not a folder"),
    Case("o-name-too-long", lambda ws: q(ws, "-o", str(ws / ("n" * 300 + ".onnx"))), "file name is too long"),
    Case("o-is-fifo", lambda ws: q(ws, "-o", _fifo(ws, "pipe.onnx")), "not a regular file"),
    Case("o-readonly-folder", lambda ws: (os.mkdir(ws / "ro"), os.chmod(ws / "ro", 0o555),
                                          q(ws, "-o", str(ws / "ro" / "o.onnx")))[-1], "read-only", skip_root=True),
    Case("calibrate-o-is-directory", lambda ws: (os.mkdir(ws / "d.npz"), ["calibrate", str(ws / "model.onnx"),
                                                 "--calib", str(ws / "calib"), "-o", str(ws / "d.npz")])[-1],
         "is a directory"),
    Case("calibrate-o-is-calib-stack", lambda ws: ["calibrate", str(ws / "model.onnx"), "--calib",
                                                   str(ws / "stack.npz"), "-o", str(ws / "stack.npz")], "refusing"),
    Case("export-scales-o-is-model", lambda ws: ["export-scales", str(ws / "q.onnx"), "--format", "json", "-o",
                                                 str(ws / "q.onnx")], "refusing to overwrite the input model"),
    Case("import-qdq-o-is-fp32", lambda ws: ["import-qdq", str(ws / "q.onnx"), "--fp32", str(ws / "model.onnx"),
                                             "-o", str(ws / "model.onnx")], "refusing"),
    Case("models-export-o-is-file", lambda ws: ["models", "export", "vit", "-o", str(ws / "model.onnx")],
         "exists and is not a folder"),
    # 3. scales and statistics validated as hard as models
    Case("scales-match-nothing", lambda ws: ["quantize", str(ws / "model.onnx"), "--scales", _scales_with(
        ws, "s.json", lambda d: d.update(tensors={f"other_{k}": v for k, v in d["tensors"].items()}))],
         "covers none of the activations"),
    Case("scales-axis-disagrees", lambda ws: ["quantize", str(ws / "model.onnx"), "--scales", _scales_with(
        ws, "s.json", lambda d: d["tensors"][_weight(d)].update(axis=1))], "axis"),
    Case("scales-zero-point-not-integer", lambda ws: ["quantize", str(ws / "model.onnx"), "--scales", _scales_with(
        ws, "s.json", lambda d: d["tensors"][_first_activation(d)].update(zero_point=1.5))], "zero_point"),
    Case("scales-zero-point-out-of-range", lambda ws: ["quantize", str(ws / "model.onnx"), "--scales", _scales_with(
        ws, "s.json", lambda d: d["tensors"][_first_activation(d)].update(zero_point=300))], "zero_point"),
    Case("scales-nan", lambda ws: ["quantize", str(ws / "model.onnx"), "--scales", _write(
        ws, "s.json", json.dumps(_scales_doc(ws)).replace('"scale": ', '"scale": NaN, "x": ', 1))], "finite"),
    Case("scales-out-of-float32", lambda ws: ["quantize", str(ws / "model.onnx"), "--scales", _scales_with(
        ws, "s.json", lambda d: d["tensors"][_first_activation(d)].update(scale=1e39))], "float32"),
    Case("scales-deeply-nested", lambda ws: ["quantize", str(ws / "model.onnx"), "--scales",
                                             _write(ws, "s.json", _deep_json())], "nested"),
    Case("scales-wrong-type", lambda ws: ["quantize", str(ws / "model.onnx"), "--scales", _scales_with(
        ws, "s.json", lambda d: d["tensors"][_first_activation(d)].update(scale=[[0.1]]))], "scale"),
    Case("scales-thousands-unknown-strict", lambda ws: ["quantize", str(ws / "model.onnx"), "--strict", "--scales",
                                                        _many_unknown(ws)], "and 4999 more"),
    Case("stats-nan", lambda ws: ["quantize", str(ws / "model.onnx"), "--stats",
                                  _bad_stats(ws, "bad.npz", _nan_stats)], "NaN or Inf"),
    Case("stats-out-of-float32", lambda ws: ["quantize", str(ws / "model.onnx"), "--stats", _bad_stats(
        ws, "bad.npz", lambda m, a: a.update({next(k for k in a if k.endswith("/hi")): np.array(1e300)}))],
         "outside float32"),
    Case("stats-meta-wrong-type", lambda ws: ["quantize", str(ws / "model.onnx"), "--stats", _bad_stats(
        ws, "bad.npz", lambda m, a: m.update(tensors={"not": "a list"}))], "must be a list"),
    Case("stats-batches-wrong-type", lambda ws: ["quantize", str(ws / "model.onnx"), "--stats", _bad_stats(
        ws, "bad.npz", lambda m, a: m.update(batches="many"))], "batches"),
    Case("stats-truncated", lambda ws: ["quantize", str(ws / "model.onnx"), "--stats", _write(
        ws, "t.npz", (ws / "stats.npz").read_bytes()[:-200])], "corrupt"),
    Case("stats-not-zip", lambda ws: ["quantize", str(ws / "model.onnx"), "--stats", _write(ws, "t.npz", "hello")],
         "not a readable .npz"),
    Case("config-deeply-nested", lambda ws: q(ws, "--config", _write(ws, "c.toml", "a = " + "[" * 50000 + "]" * 50000)),
         "nested"),
    # 4. bounded reads
    Case("npy-declares-2-to-40", lambda ws: ["quantize", str(ws / "model.onnx"), "--calib", str(Path(
        _npy_with_header(ws, "0.npy", (2**40, 3, 16, 16))).parent)], "limit per array"),
    Case("npy-truncated", lambda ws: ["quantize", str(ws / "model.onnx"), "--calib", str(Path(
        _npy_with_header(ws, "0.npy", (2, 3, 16, 16))).parent)], "truncated"),
    Case("npz-expands-past-limit", lambda ws: ["quantize", str(ws / "model.onnx"), "--calib", _zip_bomb(ws)],
         "limit per array", patch=_set_limit("onnxq.safe_read", "MAX_ARRAY_BYTES", 1024**2)),
    Case("model-is-fifo", lambda ws: ["inspect", _fifo(ws, "m.onnx")], "not a regular file"),
    Case("scales-is-fifo", lambda ws: ["quantize", str(ws / "model.onnx"), "--scales", _fifo(ws, "s.json")],
         "not a regular file"),
    Case("config-is-fifo", lambda ws: q(ws, "--config", _fifo(ws, "c.toml")), "not a regular file"),
    Case("calib-is-fifo", lambda ws: ["quantize", str(ws / "model.onnx"), "--calib", _fifo(ws, "d.npz")], "FIFO"),
    Case("scales-is-dev-zero", lambda ws: ["quantize", str(ws / "model.onnx"), "--scales", "/dev/zero"],
         "not a regular file"),
    Case("scales-over-size-limit", lambda ws: ["quantize", str(ws / "model.onnx"), "--scales", str(ws / "scales.json")],
         "limit", patch=_set_limit("onnxq.safe_read", "MAX_TEXT_BYTES", 100)),
    Case("config-over-size-limit", lambda ws: q(ws, "--config", _write(ws, "c.toml", "# padding\n" * 200_000)),
         "limit"),
    # 5. regexes cannot hang
    Case("regex-catastrophic", lambda ws: ["quantize", _model_with(ws, "r.onnx", lambda m: setattr(
        m.graph.node[0], "name", "a" * 40 + "!")), "--calib", str(ws / "calib"), "--exclude-node", "^(a+)+$",
        "-o", str(ws / "r.q.onnx")], "", code=0, writes=("r.q.onnx",), max_seconds=20),
    Case("regex-backreference", lambda ws: q(ws, "--exclude-node", "(a)\\1"), "invalid node-name regex", process=True),
    # 6. external-data locations checked by onnxq
    Case("external-data-symlink-escapes", lambda ws: ["inspect", _ext_escape(ws)], "leads out of the model's folder"),
    Case("external-data-absolute", lambda ws: ["inspect", _ext_location(ws, str(ws / "ext.onnx.data"))],
         "not a relative path"),
    Case("external-data-dotdot", lambda ws: ["inspect", _ext_location(ws, "../ext.onnx.data")], "not a relative path"),
    Case("external-data-truncated", lambda ws: (_write(ws, "ext.onnx.data", (ws / "ext.onnx.data").read_bytes()[:100]),
                                                ["inspect", str(ws / "ext.onnx")])[-1], "truncated"),
    # 7. everything else: one line and exit 2
    Case("memory-budget-not-positive", lambda ws: q(ws, "--memory-budget-mb", "0"), "--memory-budget-mb"),
    Case("o-is-dev-null", lambda ws: q(ws, "-o", "/dev/null"), "not a regular file"),
    Case("config-is-dev-null", lambda ws: q(ws, "--config", "/dev/null"), "not a regular file"),
    Case("model-missing", lambda ws: ["inspect", str(ws / "nope.onnx")], "not found"),
    Case("model-unreadable", lambda ws: (os.chmod(ws / "model.onnx", 0), ["inspect", str(ws / "model.onnx")])[-1],
         "permission denied", skip_root=True),
    Case("model-not-onnx", lambda ws: ["inspect", _write(ws, "junk.onnx", b"\x08\x01junkjunk" * 50)], "not"),
    Case("model-undefined-input-type", lambda ws: q(ws, model=Path(_model_with(
        ws, "u.onnx", _undefined_input_type)).name), "no tensor element type"),
    Case("onnxruntime-rejects", lambda ws: ["validate", _ort_rejects(ws), _ort_rejects(ws), "--data",
                                            str(ws / "val")], "onnxruntime cannot load the model", process=True),
    Case("onnxruntime-fails-at-run", _ort_fails_at_run, "onnxruntime failed on batch 1", process=True),
    Case("control-characters-in-names", lambda ws: ["quantize", _model_with(ws, "cc.onnx", _control_chars),
                                                    "--calib", str(ws / "val")], "x\\x1b[31m\\n\\rred"),
    Case("opset7-upgraded", lambda ws: ["quantize", _opset7(ws), "--calib", "random", "-o", str(ws / "o7.onnx")],
         "", code=0, writes=("o7.onnx",)),
    Case("models-export-bad-weights", lambda ws: ["models", "export", "vit", "-o", str(ws / "exp"), "--weights",
                                                  _write(ws, "w.pt", b"not a torch file")], "not a torch state_dict"),
    Case("models-export-weights-for-another-model", lambda ws: ["models", "export", "vit", "-o", str(ws / "exp"),
                                                                "--weights", _torch_state(ws)], "does not fit"),
    Case("validate-data-nan", lambda ws: ["validate", str(ws / "model.onnx"), str(ws / "q.onnx"), "--data", _write(
        ws, "nan/0.npz", _npz_bytes(x=np.full((2, 3, 16, 16), np.nan, np.float32)))], "NaN/Inf"),
    Case("calib-overflows-no-numpy-warning", lambda ws: ["quantize", str(ws / "model.onnx"), "--calib", str(Path(
        _write(ws, "huge/0.npz", _npz_bytes(x=np.full((2, 3, 16, 16), 3e38, np.float32)))).parent)],
         "no finite values"),
]


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _torch_state(ws: Path) -> str:
    torch = pytest.importorskip("torch")
    torch.save({"nothing.weight": torch.zeros(2)}, ws / "other.pt")
    return str(ws / "other.pt")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.skip_root and ROOT:
        pytest.skip("root reads and writes regardless of permissions")
    argv = case.argv(ws)
    before = snapshot(ws)
    if case.patch is not None:
        case.patch(monkeypatch)
    start = time.perf_counter()
    code, out, err = _run_process(argv) if case.process else _run(argv)
    seconds = time.perf_counter() - start
    for path in ws.rglob("*"):  # let the workspace be cleaned up
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o755)
    assert code == case.code, f"exit {code}\nstdout: {out}\nstderr: {err}"
    after = snapshot(ws)
    assert seconds < case.max_seconds
    if case.code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("onnxq: error: "), err
        assert case.match in lines[0], lines[0]
        assert lines[0].isprintable(), lines[0]
        assert after == before, "a refused command changed the workspace"
    else:  # only onnxq's own warnings; no traceback, no numpy or onnxruntime lines
        assert all(line.startswith(("warning: ", "WARNING onnxq")) for line in err.splitlines()), err
        created = set(after) - set(before)
        assert created <= set(case.writes), created
        assert {k: v for k, v in after.items() if k in before} == before, "an input changed"


# --------------------------------------------------------------------------------- scale import: the plan actually used

def test_missing_activation_scale_is_reported_as_float(ws: Path) -> None:
    """One activation missing from the scales file: its Conv stays float, and the summary says so (not "quantized")."""
    doc = _scales_doc(ws)
    missing = "r1"  # the input of conv2
    assert missing in doc["tensors"]
    del doc["tensors"][missing]
    _write(ws, "s.json", json.dumps(doc))
    code, out, err = _run(["quantize", str(ws / "model.onnx"), "--scales", str(ws / "s.json"), "-o",
                           str(ws / "o.onnx"), "--report", str(ws / "r.json")])
    assert code == 0, err
    assert "Conv: 1 quantized; 1 no scale for 'r1'" in out, out
    model = onnx.load(ws / "o.onnx")
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    assert conv2.input[0] == "r1" and conv2.input[1] == "w2"  # float input, float weight: nothing inserted
    report = json.loads((ws / "r.json").read_text())
    assert "r1" not in report["tensors"] and "w2" not in report["tensors"]  # what was inserted, nothing else
    assert {"node": "conv2", "op_type": "Conv", "reason": "no scale for 'r1' in the scales file"} in report["skipped"]


def test_thousands_of_unknown_names_give_one_summary_line(ws: Path) -> None:
    code, out, err = _run(["quantize", str(ws / "model.onnx"), "--scales", _many_unknown(ws), "-o",
                           str(ws / "o.onnx")])
    assert code == 0, err
    lines = [line for line in err.splitlines() if "unknown-tensor" in line]
    assert len(lines) == 1 and "5000 tensor(s)" in lines[0], err


def test_plan_is_frozen(ws: Path) -> None:
    from onnxq.config import QuantConfig
    from onnxq.plan import build_plan

    plan = build_plan(small_cnn(), QuantConfig())
    with pytest.raises(TypeError):
        del plan.tensors["x"]
    with pytest.raises(AttributeError):
        plan.tensors["x"].dtype = "uint8"
    with pytest.raises(TypeError):
        plan.tensors["x"].consumers.append(None)


# ------------------------------------------------------------------------------------------------ atomic writes

def test_sigterm_removes_temporary_files(tmp_path: Path) -> None:
    """A process killed by SIGTERM while writing leaves neither the output nor a temporary file."""
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from onnxq.atomic import AtomicGroup, terminate_cleanly, Terminated
        try:
            with terminate_cleanly(), AtomicGroup() as group:
                group.write_bytes({str(tmp_path / "out.bin")!r}, b"x" * 1000)
                print("staged", flush=True)
                time.sleep(30)
        except Terminated:
            sys.exit(143)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "staged"
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the temporary file exists while staged
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_quantize_cli(ws: Path) -> None:
    """The real CLI: SIGTERM mid-run prints one line, exits 143 and writes nothing."""
    before = snapshot(ws)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "onnxq.cli", "-v", "quantize", str(ws / "model.onnx"), "--calib",
                             "random", "--calib-batches", "100000", "--batch-size", "1", "-o", str(ws / "o.onnx")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    for line in proc.stderr:  # wait until the plan is built: calibration runs next
        seen.append(line)
        if "plan:" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, "".join(seen) + err
    assert err.strip().splitlines()[-1] == "onnxq: terminated; no output written", err
    assert not any(line.startswith("Traceback") for line in err.splitlines())
    assert snapshot(ws) == before


def test_atomic_write_follows_umask_and_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxq import atomic

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    old = os.umask(0o027)
    try:
        atomic.write_bytes_atomic(tmp_path / "a.bin", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640
    assert len(synced) >= 2  # the file before the rename, the folder after it
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_failed_group_writes_nothing(tmp_path: Path) -> None:
    from onnxq.atomic import AtomicGroup

    with pytest.raises(RuntimeError), AtomicGroup() as group:
        group.write_bytes(tmp_path / "model.onnx", b"m")
        group.write_bytes(tmp_path / "report.json", b"r")
        raise RuntimeError("fails after both were staged")
    assert list(tmp_path.iterdir()) == []
