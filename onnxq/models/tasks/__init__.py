"""Synthetic tasks of the reference models: numpy only (no torch), deterministic given a seed.

Each task module exposes ``make_batch(rng, batch_size) -> (inputs, labels)`` (dicts of numpy arrays),
a metric class with ``update(outputs, labels)`` / ``compute()``, and ``baseline(...)``.
"""
