"""Batches: JSONL files in and out, the bookkeeping of a batch in Redis, and ``llmqueue run``."""
