"""Batches: JSONL files in and out, submit/status/cancel/retry, ``llmqueue run`` and its display."""
