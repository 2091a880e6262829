"""The queue: jobs in Redis (arq's keys, JSON payloads), and what a worker does with each one."""
