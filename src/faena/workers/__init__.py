"""Ephemeral workers: the WorkerProvider port and its providers."""
