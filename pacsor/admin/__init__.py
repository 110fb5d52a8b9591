"""The operators' admin: a read model folded from the PACSOR stream, an HTTP API, a dashboard."""
