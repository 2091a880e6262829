"""Rate limits: the token buckets every worker shares through Redis, and the token estimates they charge."""
