"""Built-in backends (imported as ``coordkit.backends``); each registers through an entry point."""
