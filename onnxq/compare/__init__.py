"""Compare precision formats on one model: one calibration, one quantization per format, metrics, reports, plots.

The API is :func:`onnxq.compare.run.compare_formats`; this package file imports nothing, so the command line can
read :data:`onnxq.compare.defaults.DEFAULT_FORMATS` without loading onnx or onnxruntime.
"""
