"""The `hivemind-worker` command line: thin wrappers over the core."""
