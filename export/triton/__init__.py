"""Triton model repository (python -m export.triton), its check by Triton itself, the KServe manifest."""
