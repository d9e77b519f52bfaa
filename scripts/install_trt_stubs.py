"""Install the tensorrt-stubs package (TensorRT 10.x Python API) into ./.stubs for mypy, and repair what its
generator got wrong so that the stubs parse.

Why a folder of its own: the wheel ships ``tensorrt/__init__.pyi`` without an ``__init__.py``, so on ``sys.path``
``import tensorrt`` would succeed as an empty namespace package and hide that TensorRT is missing. mypy reads the
folder through ``mypy_path`` (pyproject.toml) and nothing imports from it.

Why repairs: tensorrt-stubs 10.9-10.13 contain two kinds of invalid Python, which mypy refuses to parse
("errors prevented further checking"): a parameter named ``in`` (a keyword), and a parameter without a default after
one with a default. The repair renames ``in`` to ``in_`` and drops the defaults before a non-default parameter (the
names and types, which is what onnxq is checked against, are kept).

    python scripts/install_trt_stubs.py   # then: python -m mypy
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

VERSION = "10.13.0.35.1"
TARGET = Path(__file__).resolve().parents[1] / ".stubs"

_DEF = re.compile(r"^(\s*def \w+\()(.*)(\)\s*->.*)$")


def repair_signature(params: str) -> str:
    params = re.sub(r"\bin:", "in_:", params)
    parts = [p.strip() for p in params.split(", ")]
    seen_required = False
    for i in range(len(parts) - 1, -1, -1):  # from the right: a default is legal only after no required parameter
        has_default = "=" in parts[i] and not parts[i].startswith("*")
        if not has_default and parts[i] not in ("*", "/") and not parts[i].startswith("*"):
            seen_required = True
        elif has_default and seen_required:
            parts[i] = parts[i].split("=", 1)[0].rstrip()
    return ", ".join(parts)


def repair(text: str) -> str:
    lines = []
    for line in text.splitlines():
        match = _DEF.match(line)
        if match:
            line = match.group(1) + repair_signature(match.group(2)) + match.group(3)
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> int:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target",
                    str(TARGET), f"tensorrt-stubs=={VERSION}"], check=True)
    for stub in TARGET.rglob("*.pyi"):
        stub.write_text(repair(stub.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
