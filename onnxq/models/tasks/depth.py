"""Procedural scenes with known depth for the VGGT-style ViT depth model.

A pinhole camera (64 x 64 pixels, 60 degree field of view, 1.5 m above the ground, pitched down a little)
looks at a checkered ground plane, a back wall at 10 to 20 m and 2 to 6 spheres and boxes resting on the
ground, lit by one random directional light. Ray casting is exact, so the depth map (distance along the
optical axis, metres) is known per pixel. Metric: AbsRel = mean |pred - gt| / gt over all pixels (lower is
better). Baseline: predict the per-pixel mean depth of the evaluation set itself.
"""

from __future__ import annotations

import numpy as np

from onnxq.models.tasks.metric import MeanMetric

SIZE = 64
FOV = np.deg2rad(60.0)
CAM_HEIGHT = 1.5


def _rays(pitch: float) -> np.ndarray:
    f = (SIZE / 2) / np.tan(FOV / 2)
    v, u = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    d = np.stack([(u - SIZE / 2) / f, -(v - SIZE / 2) / f, np.ones_like(u)], axis=-1)  # camera frame, z forward
    c, s = np.cos(pitch), np.sin(pitch)
    rot = np.array([[1, 0, 0], [0, c, s], [0, -s, c]])  # pitch down by `pitch`
    return d @ rot.T  # world-frame directions; the camera-frame z component of each is 1


def make_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    pitch = rng.uniform(0.05, 0.2)
    d = _rays(pitch)
    origin = np.array([0.0, CAM_HEIGHT, 0.0])
    fwd = np.array([0.0, -np.sin(pitch), np.cos(pitch)])  # optical axis in the world frame
    t_best = np.full((SIZE, SIZE), np.inf)
    normal = np.zeros((SIZE, SIZE, 3))
    albedo = np.zeros((SIZE, SIZE, 3))

    def hit(t: np.ndarray, n: np.ndarray, col: np.ndarray) -> None:
        closer = (t > 1e-3) & (t < t_best)
        t_best[closer] = t[closer]
        normal[closer] = n[closer] if n.ndim == 3 else n
        albedo[closer] = col[closer] if col.ndim == 3 else col

    # ground plane y = 0 with a checker texture
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d[..., 1] < 0, -CAM_HEIGHT / d[..., 1], np.inf)
    p = origin + d * np.where(np.isfinite(t), t, 0)[..., None]
    tile = rng.uniform(0.5, 1.5)
    checker = (np.floor(p[..., 0] / tile) + np.floor(p[..., 2] / tile)) % 2
    c0, c1 = rng.uniform(0.2, 0.9, 3), rng.uniform(0.2, 0.9, 3)
    hit(t, np.array([0.0, 1.0, 0.0]), np.where(checker[..., None] > 0, c0, c1))
    # back wall z = wall (world), facing the camera, with vertical stripes
    wall = rng.uniform(10.0, 20.0)
    t = (wall - origin[2]) / d[..., 2]
    p = origin + d * t[..., None]
    stripes = (np.floor(p[..., 0] / rng.uniform(0.8, 2.5)) % 2)[..., None]
    w0, w1 = rng.uniform(0.3, 1.0, 3), rng.uniform(0.3, 1.0, 3)
    hit(t, np.array([0.0, 0.0, -1.0]), np.where(stripes > 0, w0, w1))
    # objects resting on the ground
    for _ in range(int(rng.integers(2, 7))):
        z = rng.uniform(2.5, wall - 1.5)
        x = rng.uniform(-0.55, 0.55) * z  # roughly inside the field of view
        col = rng.uniform(0.1, 1.0, 3)
        if rng.random() < 0.5:  # sphere
            r = rng.uniform(0.3, 1.0)
            c = np.array([x, r, z])
            oc = origin - c
            b = (d * oc).sum(-1)
            a = (d * d).sum(-1)
            disc = b * b - a * ((oc * oc).sum() - r * r)
            with np.errstate(invalid="ignore"):
                t = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
            n = origin + d * np.where(np.isfinite(t), t, 0)[..., None] - c
            hit(t, n / r, col)
        else:  # axis-aligned box (slab method)
            half = rng.uniform(0.3, 1.0, 3)
            half[1] = rng.uniform(0.3, 1.2)
            lo = np.array([x - half[0], 0.0, z - half[2]])
            hi = np.array([x + half[0], 2 * half[1], z + half[2]])
            with np.errstate(divide="ignore", invalid="ignore"):
                t0 = (lo - origin) / d
                t1 = (hi - origin) / d
            tmin = np.minimum(t0, t1)
            tnear = tmin.max(-1)
            tfar = np.maximum(t0, t1).min(-1)
            t = np.where((tnear <= tfar) & (tfar > 0), tnear, np.inf)
            axis = tmin.argmax(-1)
            n = np.zeros((SIZE, SIZE, 3))
            np.put_along_axis(n, axis[..., None], -np.sign(np.take_along_axis(d, axis[..., None], -1)), -1)
            hit(t, n, col)
    light = rng.normal(size=3)
    light[1] = abs(light[1]) + 0.5
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.clip((normal * light).sum(-1), 0, 1)
    image = albedo * shade[..., None] + rng.normal(0, 0.02, (SIZE, SIZE, 3))
    depth = t_best * (d @ fwd)  # distance along the optical axis
    return image.transpose(2, 0, 1).astype(np.float32), depth[None].astype(np.float32)


def make_batch(rng: np.random.Generator, batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    samples = [make_sample(rng) for _ in range(batch_size)]
    return {"image": np.stack([s[0] for s in samples])}, {"depth": np.stack([s[1] for s in samples])}


class AbsRel(MeanMetric):
    """Mean absolute relative depth error over all pixels of all samples."""

    name = "AbsRel"
    higher_is_better = False

    def batch(self, outputs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> tuple[float, int]:
        pred = np.asarray(outputs["depth"], dtype=np.float64)
        gt = np.asarray(labels["depth"], dtype=np.float64)
        return float((np.abs(pred - gt) / gt).sum()), int(gt.size)
