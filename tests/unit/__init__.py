"""Pure tests: decisions, messages, the read model's folding, the tree's rules. No server starts
here, so `make test-fast` runs them all in seconds; everything else in tests/ runs against
real servers."""
