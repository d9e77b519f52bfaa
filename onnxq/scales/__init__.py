"""Quantization parameters (scales and zero points) and their interchange formats.

:mod:`onnxq.scales.types` holds :class:`~onnxq.scales.types.QuantParams` and ``ScaleTable``;
:mod:`onnxq.scales.formats` the format names (light: the command line reads them without numpy).
"""
