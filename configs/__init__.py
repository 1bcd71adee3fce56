"""Configuration data (YAML only): benchmark protocols, strategy presets, sweep definitions."""
