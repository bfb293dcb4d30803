"""Infrastructure every layer uses: typed YAML configs, crash-safe files, the JSONL cache, secrets and
trust, CPU threads, worker processes that die with their parent, and the data error type."""
