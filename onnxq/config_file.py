r"""Per-node configuration files (TOML).

    target = "tensorrt"            # optional top-level run settings
    weight_method = "minmax"

    [global]                       # every node
    method = "percentile"
    percentile = 99.99

    [op.ConvTranspose]             # by op type
    skip = false

    [op.MatMul]                    # precision format (onnxq.formats): int8 | int8-asym | uint8 | fp8 | w8 |
    dtype = "int4"                 # int4 | int4-asym; block_size for the block-wise ones (default 128)
    block_size = 64

    [regex."^backbone\\."]         # by node-name regex (file order; later wins)
    method = "entropy"

    [node."head/conv_out"]         # by exact node name
    skip = true

Precedence, lowest first: target defaults < [global] < [op.*] < [regex.*] < [node.*]; command-line flags are laid
over the file. Unknown keys are errors; op types, regexes and names that match nothing in the model are reported.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import onnx

from onnxq import node_regex, safe_read
from onnxq.calib.methods import check_method
from onnxq.config import NodeSetting, Overrides
from onnxq.errors import OnnxqError
from onnxq.formats import FORMATS, check_block_size, parse_format
from onnxq.graph import node_name
from onnxq.safe_read import check_nesting, read_bytes

SETTING_KEYS = {f.name for f in fields(NodeSetting)}
RUN_KEYS = {"target", "weight_method", "per_channel_weights", "float_rest"}
SECTIONS = {"global", "op", "regex", "node"}


def _setting(where: str, table: dict) -> NodeSetting:
    if not isinstance(table, dict):
        raise OnnxqError(f"{where}: expected a table of settings, got {table!r}")
    unknown = sorted(table.keys() - SETTING_KEYS)
    if unknown:
        raise OnnxqError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(SETTING_KEYS))})")
    if "skip" in table and not isinstance(table["skip"], bool):
        raise OnnxqError(f"{where}: skip must be true or false")
    if "dtype" in table:
        if not isinstance(table["dtype"], str):
            raise OnnxqError(f"{where}: dtype must be a format name ({', '.join(FORMATS)}), got {table['dtype']!r}")
        try:
            parse_format(table["dtype"], table.get("block_size"))
        except OnnxqError as exc:
            raise OnnxqError(f"{where}: {exc}") from exc
    if "block_size" in table:
        if not isinstance(table["block_size"], int) or isinstance(table["block_size"], bool):
            raise OnnxqError(f"{where}: block_size must be an integer, got {table['block_size']!r}")
        try:
            check_block_size(table["block_size"])
        except OnnxqError as exc:
            raise OnnxqError(f"{where}: {exc}") from exc
    if "percentile" in table and not (isinstance(table["percentile"], (int, float))
                                      and 0 < table["percentile"] <= 100):
        raise OnnxqError(f"{where}: percentile must be in (0, 100], got {table['percentile']!r}")
    if "method" in table:
        check_method(table["method"])
    return NodeSetting(**table)


def load_config_file(path: str | Path) -> tuple[Overrides, dict]:
    """The overrides of a TOML file, and its top-level run settings."""
    path = Path(path)
    try:
        text = read_bytes(path, "config file", safe_read.MAX_CONFIG_BYTES).decode("utf-8")
        check_nesting(text, f"config file {path}")
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise OnnxqError(f"{path} is not valid TOML: {exc}") from exc
    unknown = sorted(doc.keys() - SECTIONS - RUN_KEYS)
    if unknown:
        raise OnnxqError(f"{path}: unknown key(s) {', '.join(unknown)} (sections: global, op, regex, node; "
                         f"settings: {', '.join(sorted(RUN_KEYS))})")
    run = {k: doc[k] for k in RUN_KEYS if k in doc}
    overrides = Overrides(
        global_setting=_setting(f"{path}: [global]", doc.get("global", {})),
        by_op={op: _setting(f"{path}: [op.{op}]", t) for op, t in doc.get("op", {}).items()},
        by_regex=tuple((p, _setting(f"{path}: [regex.{p!r}]", t)) for p, t in doc.get("regex", {}).items()),
        by_name={n: _setting(f"{path}: [node.{n!r}]", t) for n, t in doc.get("node", {}).items()},
    )
    return overrides, run


def unmatched_rules(overrides: Overrides, model: onnx.ModelProto) -> list[str]:
    """Op types, regexes and node names of the overrides that match no node of the model."""
    names = [node_name(n) for n in model.graph.node]
    ops = {n.op_type for n in model.graph.node}
    found = [f"op type {op!r} is not in the model" for op in overrides.by_op if op not in ops]
    found += [f"regex {p!r} matches no node name" for p, _ in overrides.by_regex
              if not any(node_regex.search(p, n) for n in names)]
    found += [f"node {n!r} is not in the model" for n in overrides.by_name if n not in names]
    return found
