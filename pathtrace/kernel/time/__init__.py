"""kernel/time/: timekeeping and the timer wheel."""
