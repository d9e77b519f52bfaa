"""Defaults of ``onnxq compare`` (no imports: read by the command line parser)."""

#: the formats compared when ``--formats`` is not given
DEFAULT_FORMATS: tuple[str, ...] = ("int8", "int8-asym", "fp8", "w8", "int4-g128", "int4-g64")
