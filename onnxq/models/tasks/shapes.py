"""Procedural point-cloud shapes for the PointNeXt classifier.

Each sample is ``NUM_POINTS`` points sampled on the surface of one of ``CLASSES``, with a random rotation
about the up axis plus a small tilt, random (mildly anisotropic) scale, Gaussian jitter and point dropout
(dropped points are replaced by duplicates of kept ones), then centred and scaled into the unit sphere,
as ModelNet preprocessing does. Metric: overall accuracy; chance is ``1 / len(CLASSES)``.
"""

from __future__ import annotations

import numpy as np

from onnxq.models.tasks.metric import MeanMetric

CLASSES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "disk", "capsule")
NUM_POINTS = 256


def _sphere(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _cube(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.uniform(-1, 1, size=(n, 3))
    axis = rng.integers(0, 3, size=n)
    p[np.arange(n), axis] = rng.choice([-1.0, 1.0], size=n)
    return p


def _cylinder(rng: np.random.Generator, n: int) -> np.ndarray:
    # side area 2*pi*r*h = 4*pi (r=1, h=2); each cap pi -> side 2/3 of the points
    theta = rng.uniform(0, 2 * np.pi, n)
    z = rng.uniform(-1, 1, n)
    r = np.ones(n)
    cap = rng.random(n) < 1 / 3
    r[cap] = np.sqrt(rng.random(cap.sum()))
    z[cap] = rng.choice([-1.0, 1.0], size=cap.sum())
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)


def _cone(rng: np.random.Generator, n: int) -> np.ndarray:
    theta = rng.uniform(0, 2 * np.pi, n)
    # lateral surface: radius grows linearly from apex (z=1) to base (z=-1); density ~ radius
    t = np.sqrt(rng.random(n))
    r, z = t, 1 - 2 * t
    base = rng.random(n) < 0.3
    r[base] = np.sqrt(rng.random(base.sum()))
    z[base] = -1.0
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)


def _torus(rng: np.random.Generator, n: int) -> np.ndarray:
    big, small = 0.75, 0.25
    u = rng.uniform(0, 2 * np.pi, n)
    v = rng.uniform(0, 2 * np.pi, n)
    x = (big + small * np.cos(v)) * np.cos(u)
    y = (big + small * np.cos(v)) * np.sin(u)
    return np.stack([x, y, small * np.sin(v)], axis=1)


def _pyramid(rng: np.random.Generator, n: int) -> np.ndarray:
    # square base z=-1 side 2, apex (0,0,1); four triangular faces + base
    pts = np.empty((n, 3))
    base = rng.random(n) < 0.25
    nb = int(base.sum())
    pts[base] = np.column_stack([rng.uniform(-1, 1, nb), rng.uniform(-1, 1, nb), -np.ones(nb)])
    nf = n - nb
    a, b = rng.random(nf), rng.random(nf)
    flip = a + b > 1
    a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
    apex = np.array([0.0, 0.0, 1.0])
    corners = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1]], dtype=float)
    face = rng.integers(0, 4, nf)
    c0, c1 = corners[face], corners[(face + 1) % 4]
    pts[~base] = apex + a[:, None] * (c0 - apex) + b[:, None] * (c1 - apex)
    return pts


def _disk(rng: np.random.Generator, n: int) -> np.ndarray:
    # a flat round plate with a rim of small thickness
    theta = rng.uniform(0, 2 * np.pi, n)
    r = np.sqrt(rng.random(n))
    z = rng.choice([-0.08, 0.08], size=n)
    rim = rng.random(n) < 0.15
    r[rim] = 1.0
    z[rim] = rng.uniform(-0.08, 0.08, rim.sum())
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)


def _capsule(rng: np.random.Generator, n: int) -> np.ndarray:
    # cylinder of radius 0.5, half-length 0.5, with hemispherical ends
    r0, half = 0.5, 0.5
    side = rng.random(n) < 0.5
    pts = np.empty((n, 3))
    ns = int(side.sum())
    theta = rng.uniform(0, 2 * np.pi, ns)
    pts[side] = np.column_stack([r0 * np.cos(theta), r0 * np.sin(theta), rng.uniform(-half, half, ns)])
    s = _sphere(rng, n - ns) * r0
    s[:, 2] += np.where(s[:, 2] >= 0, half, -half)
    pts[~side] = s
    return pts


_GENERATORS = (_sphere, _cube, _cylinder, _cone, _torus, _pyramid, _disk, _capsule)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    yaw = rng.uniform(0, 2 * np.pi)
    tilt_x, tilt_y = rng.normal(scale=0.15, size=2)
    cz, sz = np.cos(yaw), np.sin(yaw)
    cx, sx = np.cos(tilt_x), np.sin(tilt_x)
    cy, sy = np.cos(tilt_y), np.sin(tilt_y)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return rz @ rx @ ry


def make_sample(rng: np.random.Generator, label: int, num_points: int = NUM_POINTS) -> np.ndarray:
    pts = _GENERATORS[label](rng, num_points)
    pts = pts * rng.uniform(0.8, 1.2, size=3)  # mild anisotropic scale
    pts = pts @ _rotation(rng).T
    pts = pts + rng.normal(scale=0.02, size=pts.shape)
    # point dropout: drop up to 30% and refill with duplicates of the kept points
    keep = rng.random(num_points) >= rng.uniform(0.0, 0.3)
    keep[rng.integers(num_points)] = True
    kept = pts[keep]
    pts = np.concatenate([kept, kept[rng.integers(0, len(kept), num_points - len(kept))]])
    pts = pts[rng.permutation(num_points)]
    pts = pts - pts.mean(axis=0)
    pts = pts / np.linalg.norm(pts, axis=1).max()
    return pts.astype(np.float32)


def make_batch(rng: np.random.Generator, batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    labels = rng.integers(0, len(CLASSES), size=batch_size)
    points = np.stack([make_sample(rng, int(c)) for c in labels])
    return {"points": points}, {"label": labels.astype(np.int64)}


class Accuracy(MeanMetric):
    """Overall accuracy of ``argmax(logits)`` against ``label``."""

    name = "accuracy"
    higher_is_better = True

    def batch(self, outputs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> tuple[float, int]:
        pred = np.asarray(outputs["logits"]).argmax(axis=1)
        target = np.asarray(labels["label"]).reshape(-1)
        return float((pred == target).sum()), int(target.size)


def baseline() -> tuple[float, str]:
    return 1.0 / len(CLASSES), f"chance (1/{len(CLASSES)})"
