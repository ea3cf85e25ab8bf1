"""Kafka mode: the event log the API produces to, and the faust worker that feeds the same pipeline."""
