"""Sources of change events: JSON lines (Debezium change events), synthetic; their offsets."""
