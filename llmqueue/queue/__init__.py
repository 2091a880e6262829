"""The queue: jobs and batch counters in Redis (arq's keys, JSON payloads), what a worker does with one."""
