"""Plan-driven graph changes: QuantizeLinear/DequantizeLinear from a QuantPlan and a ScaleTable.

Kept apart from :mod:`onnxq.passes` (float in, float out, numerically equal): these passes read the plan and the scales
and change the model's numerics.
"""

from onnxq.insert.qdq import InsertQDQ, quantize_array

__all__ = ["InsertQDQ", "quantize_array"]
