"""The LLM edge: one LiteLLM call made from a job, its errors classified, and the retry schedule."""
