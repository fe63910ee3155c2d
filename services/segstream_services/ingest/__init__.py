"""The ingest service (segstream run ingest)."""
