"""The node agent: takes assignments, drives a worker provider, reports back."""
