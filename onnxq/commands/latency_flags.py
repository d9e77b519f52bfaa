"""The latency flags shared by ``validate`` and ``quantize``: declared and turned into settings in one place."""

from __future__ import annotations

import argparse

from onnxq.errors import require_at_least


def add_latency_flags(group, *, default_on: bool) -> None:
    """``--latency`` (or ``--no-latency`` where timing is on by default), ``--threads N``, ``--latency-runs N``
    and ``--latency-seconds S``.
    """
    if default_on:
        group.add_argument("--no-latency", dest="latency", action="store_false",
                           help="with --val: do not time FP32 and INT8 side by side")
    else:
        group.add_argument("--latency", action="store_true",
                           help="also time both models side by side (median and p90 latency, speed ratio)")
    group.add_argument("--threads", type=int, default=0, metavar="N",
                       help="onnxruntime intra-op threads for the latency runs (default: onnxruntime's choice)")
    group.add_argument("--latency-runs", type=int, default=30, metavar="N",
                       help="at least N timed runs of each model after 5 warm-up runs (default 30)")
    group.add_argument("--latency-seconds", type=float, default=3.0, metavar="S",
                       help="keep timing until both models ran S seconds in total (default 3; at most 60 s)")
    group.set_defaults(latency=default_on)


def latency_settings(args: argparse.Namespace):
    """The LatencySettings the flags ask for, or None when timing is off."""
    from onnxq.validate.latency import LatencySettings

    if not args.latency:
        return None
    require_at_least("--threads (0: onnxruntime's choice)", args.threads, 0)
    require_at_least("--latency-runs", args.latency_runs, 1)
    require_at_least("--latency-seconds", args.latency_seconds, 0)
    return LatencySettings(threads=args.threads, runs=args.latency_runs, min_seconds=args.latency_seconds)
