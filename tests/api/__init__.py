"""The HTTP API end to end against a real attimo serve."""
