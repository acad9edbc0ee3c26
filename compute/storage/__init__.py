"""Where DLQ payloads are kept: the ``QueueStore`` interface, its rocksq store, side files."""
