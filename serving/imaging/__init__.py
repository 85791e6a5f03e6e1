"""Imaging pre- and post-processing for serving (numpy only; no torch)."""
