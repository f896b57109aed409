"""Safe files: atomic writes, hashing, safe YAML and archives, the checkpoint format, RNG capture, which rank writes."""
