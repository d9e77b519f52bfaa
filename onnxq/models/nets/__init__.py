"""Torch reference networks (import only when torch is installed)."""
