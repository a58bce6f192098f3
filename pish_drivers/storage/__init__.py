"""Storage drivers: each gives a container its root filesystem."""
