"""Flags mean the same thing in every command: --json prints JSON on stdout, -o/--output names the file written."""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnx

from onnxq.cli import build_parser
from tests.conftest import small_cnn
from tests.helpers import run_cli


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_json_is_a_stdout_flag_wherever_it_exists():
    with_json = {}
    for name, parser in _subcommands().items():
        for action in parser._actions:
            if "--json" in action.option_strings:
                with_json[name] = action
    assert {"lint", "validate"} <= set(with_json)
    for name, action in with_json.items():
        assert isinstance(action, argparse._StoreTrueAction), name
        assert "JSON on stdout" in (action.help or ""), name


def test_output_is_dash_o_wherever_a_command_writes_one_file():
    for name, parser in _subcommands().items():
        for action in parser._actions:
            if action.dest == "output":
                assert action.option_strings[:2] == ["-o", "--output"], name


def test_validate_json_prints_the_report(tmp_path):
    onnx.save(small_cnn(), tmp_path / "m.onnx")
    assert run_cli("quantize", tmp_path / "m.onnx", "--calib", "random", "-o", tmp_path / "q.onnx").returncode == 0
    (tmp_path / "val").mkdir()
    np.save(tmp_path / "val" / "0.npy", np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32))
    r = run_cli("validate", tmp_path / "m.onnx", tmp_path / "q.onnx", "--data", tmp_path / "val", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["batches"] == 1 and [o["name"] for o in doc["outputs"]] == ["logits"]
