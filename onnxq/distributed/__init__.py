"""Calibration spread over a Ray cluster (optional dependency: ``pip install "onnxq[ray]"``).

Nothing here imports ``ray`` at import time; :func:`onnxq.distributed.ray_calibrate.import_ray` does, when a run
asks for it, and turns its absence into a one-line :class:`onnxq.errors.OnnxqError`.
"""
