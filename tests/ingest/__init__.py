"""The write path: event validation, the pipeline, Segment ingest."""
