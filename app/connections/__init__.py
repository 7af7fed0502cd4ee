"""Outreach connections: records in Redis, tokens encrypted at rest, OAuth and refresh."""
