"""The destination interface (records, errors, base, factory) and its implementations."""
