"""A fake Kubernetes API server backed by the real dockerd (see server.py and pods.py)."""
