"""A local OpenAI/Anthropic-compatible server for tests, benchmarks and rehearsals. Internal."""
