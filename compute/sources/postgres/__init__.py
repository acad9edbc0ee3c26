"""PostgreSQL logical replication: ``pgoutput`` messages and their column values decoded."""

from __future__ import annotations
