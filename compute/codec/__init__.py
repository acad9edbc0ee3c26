"""How a DLQ message is written: the binary format (all versions) and its JSON views."""
