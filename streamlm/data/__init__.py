"""Text and inputs in, token ids and files out: reading, tokenising, shards, atomic writes."""
