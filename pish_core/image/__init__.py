"""Images: turning a tar or directory into a read-only root filesystem on disk."""
