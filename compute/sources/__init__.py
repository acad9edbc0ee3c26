"""Sources of change events: JSON lines (Debezium-style), synthetic; their offsets."""
