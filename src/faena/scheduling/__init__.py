"""Scheduling: queue, placement, capacity."""
