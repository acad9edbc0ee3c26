"""The operator surface: every DLQ operation, and the admin HTTP API that serves them."""
