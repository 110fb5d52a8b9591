"""The typed settings of pacsor, read once at start; imports nothing else of pacsor."""

from pacsor.config.demo import demo_env_path, running_demo_settings, write_demo_env
from pacsor.config.settings import (
    CoreSettings,
    Destination,
    Settings,
    load_settings,
    parse_destination,
    require_api_tokens,
)
from pacsor.config.variables import read_dotenv
from pacsor.errors import ConfigError

__all__ = [
    "ConfigError",
    "CoreSettings",
    "Destination",
    "Settings",
    "demo_env_path",
    "load_settings",
    "parse_destination",
    "read_dotenv",
    "require_api_tokens",
    "running_demo_settings",
    "write_demo_env",
]
