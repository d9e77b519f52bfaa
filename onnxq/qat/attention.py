"""Attention as the TorchScript ONNX exporter writes it, so that fake quant can sit where onnxq's plan puts Q/DQ.

``F.scaled_dot_product_attention`` is one call in torch, but its ONNX export (``symbolic_opset14``) is
``MatMul(q * sqrt(scale), Transpose(k) * sqrt(scale))``, ``Softmax`` and ``MatMul(weights, v)``, with
``scale = Cast(1 / Sqrt(Cast(q.shape[-1])))``; onnxq quantizes the inputs of both MatMuls. While QAT records or
fake-quantizes a model, :func:`sdpa_as_exported` stands in for the fused call and computes those same operations in
the same order (float32, same rounding), so the two MatMuls are ordinary ``matmul`` calls that the mapping can find
and the fake quant can reach. Outside QAT the model's own call runs.

``nn.MultiheadAttention`` takes a fused "fast path" (``torch._native_multi_head_attention``) in eval mode without
gradients, which the legacy exporter cannot export and which hides the projections; :func:`no_mha_fastpath` turns it
off (``torch.backends.mha.set_fastpath_enabled``) while QAT exports, records or runs the model.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def no_mha_fastpath() -> Iterator[None]:
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)


def supported(attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False, scale=None,
              enable_gqa: bool = False) -> bool:
    return not is_causal and not enable_gqa and (attn_mask is None or attn_mask.is_floating_point())


def sdpa_as_exported(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                     scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` computed as its ONNX export computes it (float masks, no causal flag)."""
    dtype = query.dtype
    if scale is None:
        embedding = torch.tensor(float(query.shape[-1]), dtype=dtype, device=query.device)
        factor = torch.sqrt(torch.ones((), dtype=dtype, device=query.device) / torch.sqrt(embedding))
    else:
        factor = torch.tensor(math.sqrt(scale), dtype=dtype, device=query.device)
    weights = torch.matmul(query * factor, key.transpose(-2, -1) * factor)
    if attn_mask is not None:
        weights = weights + attn_mask
    weights = torch.softmax(weights, dim=-1)
    if dropout_p:
        weights = F.dropout(weights, dropout_p)
    return torch.matmul(weights, value)


def mha_supported(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k, bias_v,
                  add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True, key_padding_mask=None,
                  need_weights=True, attn_mask=None, use_separate_proj_weight=False, q_proj_weight=None,
                  k_proj_weight=None, v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True,
                  is_causal=False) -> bool:
    """The case :func:`mha_as_exported` computes: batched self-attention with packed projections, no masks, no
    attention weights returned (torchvision's ViT ``EncoderBlock`` calls it so)."""
    return (query is key and key is value and query.dim() == 3 and bias_k is None and bias_v is None
            and not add_zero_attn and key_padding_mask is None and attn_mask is None and not need_weights
            and not use_separate_proj_weight and static_k is None and static_v is None and not is_causal
            and in_proj_weight is not None)


def mha_as_exported(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k,
                    bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True,
                    key_padding_mask=None, need_weights=True, attn_mask=None, use_separate_proj_weight=False,
                    q_proj_weight=None, k_proj_weight=None, v_proj_weight=None, static_k=None, static_v=None,
                    average_attn_weights=True, is_causal=False):
    """``F.multi_head_attention_forward`` for the case of :func:`mha_supported`, written with the calls its code
    makes on that path (packed in-projection, reshapes, ``scaled_dot_product_attention``, out-projection), so the
    mode that records or fake-quantizes the model sees each of them as the exporter did."""
    tgt_len, bsz, embed_dim = query.shape
    head_dim = embed_dim // num_heads
    proj = F.linear(query, in_proj_weight, in_proj_bias)
    proj = proj.unflatten(-1, (3, embed_dim)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
    q, k, v = proj[0], proj[1], proj[2]
    q = q.view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.view(k.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    v = v.view(v.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    src_len = k.size(1)
    q = q.view(bsz, num_heads, tgt_len, head_dim)
    k = k.view(bsz, num_heads, src_len, head_dim)
    v = v.view(bsz, num_heads, src_len, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, None, dropout_p if training else 0.0, False)
    out = out.permute(2, 0, 1, 3).contiguous().view(bsz * tgt_len, embed_dim)
    out = F.linear(out, out_proj_weight, out_proj_bias)
    return out.view(tgt_len, bsz, out.size(1)), None
