"""The typed settings of pacsor, read once at start; imports nothing else of pacsor."""

from pacsor.config.settings import (
    ConfigError,
    Destination,
    Settings,
    load_settings,
    parse_destination,
    read_dotenv,
    require,
)

__all__ = [
    "ConfigError",
    "Destination",
    "Settings",
    "load_settings",
    "parse_destination",
    "read_dotenv",
    "require",
]
