"""The `rosetta` command: `run` and the operator's `dlq` commands."""
