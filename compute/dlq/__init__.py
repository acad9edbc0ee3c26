"""The DLQ: persistent per-queue storage of failed changes until they are replayed or parked."""
