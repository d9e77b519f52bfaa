"""A few runs of the real ``onnxq`` process (the other CLI tests run ``onnxq.cli.main`` in process)."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx

from tests.conftest import small_cnn

HEAVY = ("onnx", "onnxruntime", "numpy")


def _onnxq(*args: object, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxq.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_help_and_argument_errors_import_no_heavy_module():
    code = (
        "import json, sys\n"
        "from onnxq.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        f"print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    for args, want in ((["--help"], 0), (["quantize", "--help"], 0), (["quantize"], 2),
                       (["lint", "m.onnx", "--target", "nope"], 2)):
        run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
        status, loaded = json.loads(run.stdout.strip().splitlines()[-1])
        assert (status, loaded) == (want, []), (args, run.stderr)


def test_quantize_end_to_end_in_a_real_process(tmp_path):
    onnx.save(small_cnn(), tmp_path / "model.onnx")
    run = _onnxq("quantize", tmp_path / "model.onnx", "--calib", "random", "-o", tmp_path / "q.onnx")
    assert run.returncode == 0, run.stderr
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(tmp_path / "q.onnx").graph.node) > 0


def test_user_error_is_one_stderr_line_and_exit_2(tmp_path):
    run = _onnxq("quantize", tmp_path / "missing.onnx", "--calib", "random")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().count("\n") == 0 and run.stderr.startswith("onnxq: error: model file not found")
