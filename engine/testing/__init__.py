"""Real services for Attimo's tests and benchmarks, never imported by the product.

- processes: the one way to run a server process (a free port, wait until it
  answers, stop it on every way out), CPU pinning, and the servers built on it:
  redis-server and a Redis Cluster, `attimo serve`, uvicorn apps; `wait_until`.
- kafka: the Tansu Kafka-protocol broker.
- sinks: an SMTP server and an HTTP webhook receiver that keep what they get.
"""
