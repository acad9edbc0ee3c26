"""The Snowflake destination: a temporary stage table and one MERGE per batch."""
