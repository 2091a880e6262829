"""Operations: local Redis and worker processes, job events, logs, metrics, the worker registry, redaction."""
