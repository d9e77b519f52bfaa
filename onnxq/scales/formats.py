"""Names of the scale-file formats and of the TensorRT calibration-cache header fields (no imports: the command line
lists them in ``--help`` without loading numpy or onnx)."""

from __future__ import annotations

#: scale-file formats: onnxq JSON, TensorRT calibration cache, AIMET 0.6.1 encodings
FORMATS = ("json", "trt-cache", "aimet")
#: formats that carry no weight scales (a TensorRT calibration cache: TensorRT computes weight scales itself). For
#: them ``--strict`` checks the activations only; weights always come from their values.
WEIGHTLESS_FORMATS = frozenset({"trt-cache"})
DEFAULT_EXTENSIONS = {"json": ".json", "trt-cache": ".cache", "aimet": ".encodings"}

#: calibrator names a TensorRT calibration cache header may carry ("TRT-8601-EntropyCalibration2")
TRT_CACHE_ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
TRT_CACHE_DEFAULT_ALGORITHM = "EntropyCalibration2"
TRT_CACHE_DEFAULT_VERSION = "8601"  # TensorRT 8.6.1's NV_TENSORRT_VERSION, as in "TRT-8601-..."
