"""Attimo's engine. Read it bottom up: settings, errors, clock and the pure
types (events, profile, policy); store/ (Redis); catalog/ (the language);
decisions/ (the hot path); followups/; ingest/ (the write path); stream/
(Kafka); runtime (builds every store once per process); cli."""
