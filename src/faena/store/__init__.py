"""Persistence: the Store port and its adapters (memory, SQL)."""
