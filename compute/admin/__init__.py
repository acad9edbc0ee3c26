"""The operator surface: DLQ operations, their JSONL export format and the admin HTTP API."""
