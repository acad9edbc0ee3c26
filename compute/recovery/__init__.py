"""Replay: per pipeline, probe each destination and replay its queues in order once healthy."""
