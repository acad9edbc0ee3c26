"""Observability of the engine: Prometheus metrics, alert evaluation and notification."""
