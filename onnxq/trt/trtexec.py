"""The trtexec command line equivalent to ``onnxq build-engine`` (for machines where only trtexec is installed).

Flag names follow trtexec's own help and NVIDIA's "Migrating trtexec Usage from TensorRT 8.x to 10.x" appendix
(``--workspace=N`` became ``--memPoolSize=workspace:N``, N in MiB). Precision flags follow the same rules as the
Python build path (:func:`onnxq.trt.build.precision_mode`): ``--stronglyTyped`` for TensorRT 10+ without FP16
fallback, else ``--int8`` (needed by weakly-typed networks with Q/DQ, NVIDIA/TensorRT#4021) plus ``--fp16``.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from onnxq.trt.shapes import Profile, format_shapes


def trtexec_command(model: str | Path, engine: str | Path, *, mode: str, fp16: bool = False,
                    profile: Profile | None = None, workspace_mib: int | None = None, trt_major: int = 10,
                    layer_info: str | Path | None = None) -> list[str]:
    """Arguments of the trtexec call; ``mode`` is ``strongly-typed`` or ``weakly-typed``."""
    cmd = ["trtexec", f"--onnx={model}", f"--saveEngine={engine}"]
    if mode == "strongly-typed":
        cmd.append("--stronglyTyped")
    else:
        cmd.append("--int8")
        if fp16:
            cmd.append("--fp16")
    if profile is not None and not profile.empty:
        cmd += [f"--minShapes={format_shapes(profile.min)}", f"--optShapes={format_shapes(profile.opt)}",
                f"--maxShapes={format_shapes(profile.max)}"]
    if workspace_mib is not None:
        cmd.append(f"--memPoolSize=workspace:{workspace_mib}")
    if trt_major >= 10:
        cmd.append("--skipInference")
    cmd.append("--profilingVerbosity=detailed")
    if layer_info is not None:
        cmd.append(f"--exportLayerInfo={layer_info}")
    return cmd


def format_command(cmd: list[str]) -> str:
    return shlex.join(cmd)
