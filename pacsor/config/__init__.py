"""The typed settings of pacsor, read once at start; imports nothing else of pacsor."""

from pacsor.config.settings import (
    ConfigError,
    CoreSettings,
    Destination,
    Settings,
    load_settings,
    parse_destination,
    read_dotenv,
    require_api_tokens,
)

__all__ = [
    "ConfigError",
    "CoreSettings",
    "Destination",
    "Settings",
    "load_settings",
    "parse_destination",
    "read_dotenv",
    "require_api_tokens",
]
