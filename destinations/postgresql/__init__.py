"""The PostgreSQL destination: COPY or VALUES upserts in one transaction per batch."""
