"""Accuracy recovery after post-training quantization: sensitivity analysis, mixed precision, and algorithms that
bring a quantized model closer to its FP32 original."""
