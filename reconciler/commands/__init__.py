"""One module per command: options in, exit code out; the CLI only parses and calls."""
