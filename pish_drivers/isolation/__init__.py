"""Isolation drivers: each starts the container's process in its own namespaces."""
