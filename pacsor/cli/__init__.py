"""The `pacsor` command line: its entry point, the commands, the setup wizard and `pacsor check`."""
