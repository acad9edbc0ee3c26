"""The NATS JetStream queue store: queues, records, positions and leases in a replicated cluster."""
