"""How fast can one batch be added to a streaming histogram? Prints milliseconds per batch for each method.

    python benchmarks/binning_bench.py                       # 32 batches of 8x64x160x160 float32
    python benchmarks/binning_bench.py --batches 4 --shape 8,64,80,80

Every method bins the batch on the same canonical grid as :mod:`onnxq.calib.histogram` (|x| < 2**e, 16384 bins
per sign, bin = trunc(|x| * 2**(14 - e))) and is checked against an exact float64 reference. ``np.histogram``
and the slow ``np.add.at`` only run on the first ``--slow-batches`` batches. Results are a measurement, not a test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from onnxq.calib.base import finite_values_and_range
from onnxq.calib.histogram import StreamingHistogram, bin_signed, fine_bins, grid_exponent

BINS = fine_bins(2048)
LOG2 = int(np.log2(BINS))


def reference(x: np.ndarray, e: int) -> np.ndarray:
    """Exact signed counts, float64 arithmetic: [neg reversed | pos] as one 2*BINS array."""
    a = np.floor(np.abs(x.astype(np.float64)) * 2.0 ** (LOG2 - e)).astype(np.int64)
    neg = x < 0
    pos_counts = np.bincount(a[~neg], minlength=BINS)
    neg_counts = np.bincount(a[neg], minlength=BINS)
    return np.concatenate([neg_counts[::-1], pos_counts])


def np_histogram(x: np.ndarray, e: int) -> np.ndarray:
    # Signed grid edges -2**e .. 2**e; numpy's bins are [a, b) like the positive side but the negative side's
    # bins hold (-(j+1)w, -jw] in the canonical grid, so values on negative edges land one bin off.
    return np.histogram(x, bins=2 * BINS, range=(-(2.0**e), 2.0**e))[0]


def bincount_abs_two_passes(x: np.ndarray, e: int) -> np.ndarray:
    scale = np.float32(2.0 ** (LOG2 - e))
    neg = x < 0
    a = (np.abs(x) * scale).astype(np.intp)
    all_counts = np.bincount(a, minlength=BINS)
    neg_counts = np.bincount(a[neg], minlength=BINS)
    return np.concatenate([neg_counts[::-1], all_counts - neg_counts])


def bincount_signed_whole(x: np.ndarray, e: int) -> np.ndarray:
    scale = np.float32(2.0 ** (LOG2 - e))
    idx = (x * scale).astype(np.intp)
    idx += BINS
    idx -= x < 0
    return np.bincount(idx, minlength=2 * BINS)


def bincount_signed_int32(x: np.ndarray, e: int) -> np.ndarray:
    scale = np.float32(2.0 ** (LOG2 - e))
    idx = (x * scale).astype(np.int32)
    idx += BINS
    idx -= x < 0
    return np.bincount(idx, minlength=2 * BINS)


def bincount_signed_chunked(x: np.ndarray, e: int) -> np.ndarray:
    """The library's method (onnxq.calib.histogram.bin_signed): chunks of 2**18 values."""
    pos, neg = bin_signed(x, e, BINS)
    return np.concatenate([neg[::-1], pos])


def add_at(x: np.ndarray, e: int) -> np.ndarray:
    scale = np.float32(2.0 ** (LOG2 - e))
    idx = (x * scale).astype(np.intp) + BINS - (x < 0)
    out = np.zeros(2 * BINS, dtype=np.int64)
    np.add.at(out, idx, 1)
    return out


FAST = {
    "bincount, |x| + negatives (2 bincounts)": bincount_abs_two_passes,
    "bincount, signed index, whole batch": bincount_signed_whole,
    "bincount, signed int32 index, whole batch": bincount_signed_int32,
    "bincount, signed index, chunks of 2**18 (library)": bincount_signed_chunked,
}
SLOW = {"np.histogram, 2x16384 uniform bins": np_histogram, "np.add.at": add_at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("--shape", default="8,64,160,160")
    parser.add_argument("--slow-batches", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shape = tuple(int(d) for d in args.shape.split(","))
    rng = np.random.default_rng(args.seed)
    # One base batch (generating 32 x 52 MB of random numbers would dominate); each batch is a different
    # rescaling of it so the grid has to grow now and then, as in a real calibration run.
    base = rng.standard_normal(shape, dtype=np.float32)
    scales = np.exp(rng.normal(0.0, 0.5, size=args.batches)).astype(np.float32)
    print(f"{args.batches} batches of {shape} float32 ({base.size * 4 / 2**20:.0f} MiB each), "
          f"{BINS} bins per sign, numpy {np.__version__}")

    times: dict[str, list[float]] = {name: [] for name in [*FAST, *SLOW]}
    exact: dict[str, bool] = {name: True for name in times}
    hist = StreamingHistogram(BINS)
    add_times, finite_times = [], []
    for b in range(args.batches):
        x = (base * scales[b]).ravel()
        e = grid_exponent(float(np.abs(x).max()))
        expected = reference(x, e) if b < 2 else None
        methods = dict(FAST)
        if b < args.slow_batches:
            methods.update(SLOW)
        for name, fn in methods.items():
            t0 = time.perf_counter()
            counts = fn(x, e)
            times[name].append(time.perf_counter() - t0)
            if expected is not None and not np.array_equal(counts, expected):
                exact[name] = False
        t0 = time.perf_counter()
        values, lo, hi = finite_values_and_range(x)
        finite_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hist.add(values, lo, hi)
        add_times.append(time.perf_counter() - t0)

    print(f"{'method':55s} {'ms/batch':>9s} {'batches':>8s}  exact grid")
    for name, ts in times.items():
        print(f"{name:55s} {1000 * np.median(ts):9.1f} {len(ts):8d}  {'yes' if exact[name] else 'NO'}")
    print(f"{'finite check + min/max (finite_values_and_range)':55s} {1000 * np.median(finite_times):9.1f} "
          f"{len(finite_times):8d}")
    print(f"{'StreamingHistogram.add (incl. re-gridding)':55s} {1000 * np.median(add_times):9.1f} {len(add_times):8d}")
    print(f"total for the run: {sum(add_times) + sum(finite_times):.2f} s; histogram memory "
          f"{hist.pos.nbytes + hist.neg.nbytes} bytes")


if __name__ == "__main__":
    main()
