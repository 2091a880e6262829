"""Batch files, by the names they had when one module held them: reading in
:mod:`llmqueue.batches.input`, writing in :mod:`llmqueue.batches.output`."""

from llmqueue.batches.input import (
    MAX_STORED_ERRORS,
    RAW_LIMIT,
    URL_KINDS,
    BatchFileError,
    FileCheck,
    LineError,
    Refuser,
    check_file,
    invalid_file_error,
    iter_jobs,
    job_id_for,
    read_requests,
    require_requests,
)
from llmqueue.batches.output import (
    json_line,
    output_record,
    rejected_record,
    write_jsonl,
    write_rejects,
    write_results,
)

__all__ = [
    "MAX_STORED_ERRORS",
    "RAW_LIMIT",
    "URL_KINDS",
    "BatchFileError",
    "FileCheck",
    "LineError",
    "Refuser",
    "check_file",
    "invalid_file_error",
    "iter_jobs",
    "job_id_for",
    "json_line",
    "output_record",
    "read_requests",
    "rejected_record",
    "require_requests",
    "write_jsonl",
    "write_rejects",
    "write_results",
]
