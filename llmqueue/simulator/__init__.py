"""A simulated OpenAI-compatible provider for tests, benchmarks and the demo.

Nothing on the request path (producer, worker, runner, the LiteLLM call, the limiter, the job store)
imports this package.
"""
