"""The project's command line: one entry point above every layer (it may import runtime/ and bench/)."""
