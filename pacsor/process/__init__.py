"""The process runtime: what a component is given, how components run, logs and counters."""
