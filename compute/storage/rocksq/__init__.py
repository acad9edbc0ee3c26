"""The rocksq-backed queue store: ``RocksqStore`` (store.py) and the parts it wires together."""
