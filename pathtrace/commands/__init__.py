"""Commands built on the replay engine: explain, check, diff, lint (issue #5)."""
