"""Kafka mode: the event log and the worker, against a real Tansu broker."""
