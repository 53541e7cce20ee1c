"""Host description: the YAML users write, its loading and validation."""
