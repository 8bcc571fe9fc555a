"""The LLM layer: prompt tasks and their sessions, the one paid-call path, prompts and
output schemas, providers, rate limits, token estimates and cost. Internal."""
