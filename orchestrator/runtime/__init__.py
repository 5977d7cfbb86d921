"""What keeps the server running: lifecycle, metrics, logs, GC policy."""
