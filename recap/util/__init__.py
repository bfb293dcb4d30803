"""Infrastructure every layer uses: typed YAML configs, crash-safe files, the JSONL cache, secrets and
trust, CPU threads, and the data error type."""
