"""Tiny images generated on the fly for the pipeline tests (nothing binary is committed)."""
