"""TensorRT hand-off: Q/DQ lint (no TensorRT needed), engine build (optional ``tensorrt``), trtexec command lines."""
