"""Synthetic bird's-eye-view scenes for the CenterPoint and BEVFusion detectors.

A scene is a 32 m x 32 m square around the ego vehicle, rasterised at 0.5 m into a 64 x 64 grid. It holds
3 to 10 objects of ``CLASSES`` (random size, yaw, position, no overlap) and distractors that are not to be
detected: poles, bushes, walls and posts (posts have a pedestrian's footprint and height).

LiDAR pillar features (what a PointPillars pillar encoder summarises per cell), channels:
``[point count, max height, mean height, min height, mean intensity, ground point count]``; only the
sensor-facing half of each object returns points, density falls with range, cells drop out at random.
The BEVFusion variant uses a sparser LiDAR without intensity (so posts look like pedestrians) and adds
a camera BEV feature made as a lift-splat view transform would: a class-dependent appearance vector
smeared along the ray from the ego through the object around a biased depth estimate (about 12 %
error per object), with depth spread growing with range, and varying visibility.

Labels: ``boxes`` (B, M, 7) = x, y, z, length, width, height, yaw in metres / radians, ``classes`` (B, M)
int64, padded with -1. Detector outputs are at stride 2 (1 m cells, 32 x 32). Metric: mean average precision
over classes, detections matched to ground truth of the same class by centre distance <= ``MATCH_DISTANCE``
(nuScenes style, without the box-size terms).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("car", "truck", "pedestrian")
GRID = 64  # input cells per side
CELL = 0.5  # metres per input cell
HALF_EXTENT = GRID * CELL / 2  # 16 m
OUT_STRIDE = 2
OUT_GRID = GRID // OUT_STRIDE
OUT_CELL = CELL * OUT_STRIDE  # 1 m
MAX_OBJECTS = 12
MATCH_DISTANCE = 1.0  # metres
LIDAR_CHANNELS = 6
FUSION_LIDAR_CHANNELS = 5
CAMERA_CHANNELS = 8

# length, width, height ranges (metres) and LiDAR intensity per class
_SIZES = {
    "car": ((3.8, 4.8), (1.7, 2.0), (1.4, 1.7)),
    "truck": ((6.0, 9.0), (2.3, 2.6), (2.8, 3.5)),
    "pedestrian": ((0.5, 0.9), (0.5, 0.9), (1.6, 1.9)),
    "pole": ((0.3, 0.4), (0.3, 0.4), (3.0, 6.0)),
    "bush": ((1.0, 2.5), (1.0, 2.5), (0.5, 1.2)),
    "wall": ((5.0, 12.0), (0.3, 0.5), (1.0, 2.5)),
    "post": ((0.5, 0.8), (0.5, 0.8), (1.5, 2.0)),
}
_INTENSITY = {"car": 0.6, "truck": 0.5, "pedestrian": 0.25, "pole": 0.8, "bush": 0.15, "wall": 0.4, "post": 0.9}
_KINDS = tuple(_SIZES)
# camera appearance: fixed pseudo-random embedding per kind (posts and pedestrians differ here)
_EMBED = np.random.default_rng(1234).normal(size=(len(_KINDS), CAMERA_CHANNELS)).astype(np.float32)


@dataclass
class Scene:
    kinds: list[str]
    boxes: np.ndarray  # (n, 7) x, y, z, l, w, h, yaw


def _cell_centres(grid: int, cell: float) -> tuple[np.ndarray, np.ndarray]:
    c = -HALF_EXTENT + (np.arange(grid) + 0.5) * cell
    return np.meshgrid(c, c, indexing="xy")  # xs[iy, ix], ys[iy, ix]


_XS, _YS = _cell_centres(GRID, CELL)
_RANGE = np.hypot(_XS, _YS)


def make_scene(rng: np.random.Generator) -> Scene:
    kinds: list[str] = []
    boxes: list[list[float]] = []
    n_obj = int(rng.integers(3, 11))
    n_distract = int(rng.integers(2, 7))
    wanted = [CLASSES[int(i)] for i in rng.choice(len(CLASSES), size=n_obj, p=[0.5, 0.2, 0.3])]
    wanted += [("pole", "bush", "wall", "post")[int(i)] for i in rng.integers(0, 4, n_distract)]
    for kind in wanted:
        (l0, l1), (w0, w1), (h0, h1) = _SIZES[kind]
        for _ in range(20):  # rejection sampling against overlap
            length, w, h = rng.uniform(l0, l1), rng.uniform(w0, w1), rng.uniform(h0, h1)
            margin = 1.0 + length / 2
            x, y = rng.uniform(-HALF_EXTENT + margin, HALF_EXTENT - margin, size=2)
            if np.hypot(x, y) < 3.0:  # keep clear of the ego vehicle
                continue
            radius = np.hypot(length, w) / 2
            if all(np.hypot(x - b[0], y - b[1]) > radius + np.hypot(b[3], b[4]) / 2 + 0.3 for b in boxes):
                kinds.append(kind)
                boxes.append([x, y, h / 2, length, w, h, rng.uniform(-np.pi, np.pi)])
                break
    return Scene(kinds, np.asarray(boxes, dtype=np.float64).reshape(-1, 7))


def _footprint(box: np.ndarray) -> np.ndarray:
    x, y, _, length, w, _, yaw = box
    dx, dy = _XS - x, _YS - y
    c, s = np.cos(yaw), np.sin(yaw)
    u, v = c * dx + s * dy, -s * dx + c * dy
    # half a cell of slack so that small objects still cover at least one cell
    return (np.abs(u) <= length / 2 + 0.25 * CELL) & (np.abs(v) <= w / 2 + 0.25 * CELL)


def render_lidar(scene: Scene, rng: np.random.Generator, *, intensity: bool = True, density: float = 1.0) -> np.ndarray:
    """Pillar features (C, GRID, GRID), float32."""
    falloff = density / (1.0 + (_RANGE / 10.0) ** 2)
    ground = rng.poisson(6.0 * falloff).astype(np.float64)
    count = np.zeros((GRID, GRID))
    zmax = np.zeros((GRID, GRID))
    zmean = np.zeros((GRID, GRID))
    zmin = np.zeros((GRID, GRID))
    inten = np.zeros((GRID, GRID))
    for kind, box in zip(scene.kinds, scene.boxes):
        mask = _footprint(box)
        centre_range = np.hypot(box[0], box[1])
        mask &= _RANGE <= centre_range + 0.15 * min(box[3], box[4]) + 0.3 * CELL  # sensor-facing half
        iy, ix = np.nonzero(mask)
        if len(iy) == 0:
            continue
        lam = 12.0 * falloff[iy, ix] * box[5] / 1.7
        n = rng.poisson(lam).astype(np.float64)
        n[rng.random(len(n)) < 0.15] = 0  # random cell dropout
        hit = n > 0
        iy, ix, n = iy[hit], ix[hit], n[hit]
        h = box[5]
        count[iy, ix] = n
        zmax[iy, ix] = h - np.abs(rng.normal(0, 0.08, len(n)))
        zmean[iy, ix] = h / 2 + rng.normal(0, 0.1, len(n)) * h / np.sqrt(n)
        zmin[iy, ix] = np.abs(rng.normal(0.1, 0.05, len(n)))
        inten[iy, ix] = np.clip(_INTENSITY[kind] + rng.normal(0, 0.12, len(n)) / np.sqrt(n), 0, 1)
        ground[iy, ix] = np.floor(ground[iy, ix] * 0.3)  # the object shadows the ground behind it
    zeros = count == 0
    zmax[zeros] = zmean[zeros] = zmin[zeros] = 0
    feats = [np.log1p(count), zmax / 2, zmean / 2, zmin, inten, np.log1p(ground)]
    if not intensity:
        del feats[4]
    return np.stack(feats).astype(np.float32)


def render_camera(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Camera BEV features (CAMERA_CHANNELS, GRID, GRID): appearance smeared along rays (lift-splat style)."""
    out = rng.normal(0, 0.25, size=(CAMERA_CHANNELS, GRID, GRID))
    ang = np.arctan2(_YS, _XS)
    for kind, box in zip(scene.kinds, scene.boxes):
        # monocular depth is biased per object (about 12 % at one sigma); the bearing is nearly exact
        dist = np.hypot(box[0], box[1]) * np.exp(rng.normal(0, 0.12))
        theta = np.arctan2(box[1], box[0]) + rng.normal(0, 0.01)
        half_width = max(box[3], box[4]) / 2
        dang = np.angle(np.exp(1j * (ang - theta)))
        ang_w = np.exp(-0.5 * (dang / max(np.arctan2(half_width, dist), 0.02)) ** 2)
        sigma = 0.5 + 0.12 * dist  # depth uncertainty grows with range
        depth_w = np.exp(-0.5 * ((_RANGE - dist) / sigma) ** 2)
        weight = ang_w * depth_w
        emb = _EMBED[_KINDS.index(kind)] + rng.normal(0, 0.6, CAMERA_CHANNELS)
        out += rng.uniform(0.4, 1.0) * weight[None] * emb[:, None, None]  # visibility varies
    return out.astype(np.float32)


def _labels(scenes: list[Scene]) -> dict[str, np.ndarray]:
    boxes = np.zeros((len(scenes), MAX_OBJECTS, 7), dtype=np.float32)
    classes = np.full((len(scenes), MAX_OBJECTS), -1, dtype=np.int64)
    for i, sc in enumerate(scenes):
        j = 0
        for kind, box in zip(sc.kinds, sc.boxes):
            if kind in CLASSES and j < MAX_OBJECTS:
                boxes[i, j] = box
                classes[i, j] = CLASSES.index(kind)
                j += 1
    return {"boxes": boxes, "classes": classes}


def make_batch_lidar(rng: np.random.Generator, batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """CenterPoint task: ``{"pillars": (B, 6, 64, 64)}``."""
    scenes = [make_scene(rng) for _ in range(batch_size)]
    pillars = np.stack([render_lidar(s, rng) for s in scenes])
    return {"pillars": pillars}, _labels(scenes)


def make_batch_fusion(rng: np.random.Generator, batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """BEVFusion task: ``{"camera_bev": (B, 8, 64, 64), "lidar_bev": (B, 5, 64, 64)}``."""
    scenes = [make_scene(rng) for _ in range(batch_size)]
    camera = np.stack([render_camera(s, rng) for s in scenes])
    lidar = np.stack([render_lidar(s, rng, intensity=False, density=0.5) for s in scenes])
    return {"camera_bev": camera, "lidar_bev": lidar}, _labels(scenes)


# ----------------------------------------------------------------------------------------------- targets


def targets(labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CenterPoint training targets at output resolution: Gaussian heatmaps and, at each centre cell,
    regression targets ``reg`` (sub-cell offset), ``height`` (z), ``dim`` (log l, w, h), ``rot`` (sin, cos)."""
    boxes, classes = labels["boxes"], labels["classes"]
    b = boxes.shape[0]
    heat = np.zeros((b, len(CLASSES), OUT_GRID, OUT_GRID), dtype=np.float32)
    reg = np.zeros((b, 8, OUT_GRID, OUT_GRID), dtype=np.float32)  # reg 2, height 1, dim 3, rot 2
    mask = np.zeros((b, 1, OUT_GRID, OUT_GRID), dtype=np.float32)
    gy, gx = np.mgrid[0:OUT_GRID, 0:OUT_GRID]
    for i in range(b):
        for box, cls in zip(boxes[i], classes[i]):
            if cls < 0:
                continue
            fx = (box[0] + HALF_EXTENT) / OUT_CELL
            fy = (box[1] + HALF_EXTENT) / OUT_CELL
            ix, iy = int(fx), int(fy)
            sigma = max(0.5, min(box[3], box[4]) / OUT_CELL / 3)
            g = np.exp(-((gx - ix) ** 2 + (gy - iy) ** 2) / (2 * sigma**2))
            heat[i, cls] = np.maximum(heat[i, cls], g)
            reg[i, :, iy, ix] = [fx - ix, fy - iy, box[2], *np.log(box[3:6]), np.sin(box[6]), np.cos(box[6])]
            mask[i, 0, iy, ix] = 1
    return {"heatmap": heat, "regression": reg, "mask": mask}


# ----------------------------------------------------------------------------------------------- metric


def decode(heatmap: np.ndarray, reg: np.ndarray, *, threshold: float = 0.05, top_k: int = 40) -> list[np.ndarray]:
    """Peaks of a (B, K, h, w) heatmap (3 x 3 max-pool NMS) -> per sample array of (score, class, x, y)."""
    b, _, h, w = heatmap.shape
    padded = np.pad(heatmap, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    local_max = np.max(
        np.stack([padded[:, :, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)]), axis=0
    )
    peaks = (heatmap >= local_max) & (heatmap > threshold)
    result = []
    for i in range(b):
        cls, iy, ix = np.nonzero(peaks[i])
        scores = heatmap[i, cls, iy, ix]
        order = np.argsort(-scores, kind="stable")[:top_k]
        cls, iy, ix, scores = cls[order], iy[order], ix[order], scores[order]
        x = -HALF_EXTENT + (ix + reg[i, 0, iy, ix]) * OUT_CELL
        y = -HALF_EXTENT + (iy + reg[i, 1, iy, ix]) * OUT_CELL
        result.append(np.stack([scores, cls, x, y], axis=1) if len(order) else np.zeros((0, 4)))
    return result


def average_precision(tp: np.ndarray, scores: np.ndarray, n_gt: int) -> float:
    """Area under the interpolated precision-recall curve (101 recall points, as COCO / nuScenes)."""
    if n_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = tp[order].astype(np.float64)
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(tp) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # envelope
    ap = 0.0
    for r in np.linspace(0, 1, 101):
        above = precision[recall >= r]
        ap += above.max() if len(above) else 0.0
    return ap / 101


class DetectionAP:
    """Mean AP over classes at a fixed centre-distance threshold, accumulated over all batches."""

    name = "mAP@1m"
    higher_is_better = True

    def __init__(self, match_distance: float = MATCH_DISTANCE) -> None:
        self.match_distance = match_distance
        self.scores: list[list[float]] = [[] for _ in CLASSES]
        self.tp: list[list[bool]] = [[] for _ in CLASSES]
        self.n_gt = [0 for _ in CLASSES]

    def update(self, outputs: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
        dets = decode(np.asarray(outputs["heatmap"]), np.asarray(outputs["reg"]))
        for i, det in enumerate(dets):
            boxes, classes = labels["boxes"][i], labels["classes"][i]
            for c in range(len(CLASSES)):
                gt = boxes[classes == c][:, :2]
                self.n_gt[c] += len(gt)
                used = np.zeros(len(gt), dtype=bool)
                for score, _, x, y in det[det[:, 1] == c]:  # det is sorted by score
                    matched = False
                    if len(gt):
                        d = np.hypot(gt[:, 0] - x, gt[:, 1] - y)
                        d[used] = np.inf
                        j = int(np.argmin(d))
                        if d[j] <= self.match_distance:
                            used[j] = matched = True
                    self.scores[c].append(float(score))
                    self.tp[c].append(matched)

    def per_class(self) -> dict[str, float]:
        return {
            name: average_precision(np.asarray(self.tp[c], dtype=bool), np.asarray(self.scores[c]), self.n_gt[c])
            for c, name in enumerate(CLASSES)
        }

    def compute(self) -> float:
        aps = [v for v in self.per_class().values() if not np.isnan(v)]
        return float(np.mean(aps)) if aps else float("nan")


def baseline_outputs(labels: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The trivial detector: uniform random heatmap scores, centre of the cell."""
    b = labels["boxes"].shape[0]
    return {
        "heatmap": rng.random((b, len(CLASSES), OUT_GRID, OUT_GRID)).astype(np.float32),
        "reg": np.full((b, 2, OUT_GRID, OUT_GRID), 0.5, dtype=np.float32),
    }
