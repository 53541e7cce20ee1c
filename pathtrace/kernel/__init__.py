"""kernel/: the core kernel services the network stack's model leans on (timers)."""
