"""The products `pacsor setup` offers, read from environments.json (a file a vendor edits).

Each product names its inference commands, its HL7 defaults (HL7 variables: which findings
feed the message) and its AI environments (a label and the API's URL). The file is checked as
it is read: a bad URL, command or HL7 variable is one line naming the product and the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from pacsor.config.hl7 import VARIABLE_NAMES, load_hl7_settings
from pacsor.config.variables import HttpUrl, InferenceCommand
from pacsor.errors import ConfigError

PRODUCTS_FILE = Path(__file__).with_name("environments.json")


class Product(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    inference_commands: Annotated[tuple[InferenceCommand, ...], Meta(min_length=1)]
    environments: dict[str, HttpUrl] = {}
    hl7: dict[str, str] = {}


class _File(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    products: Annotated[dict[str, Product], Meta(min_length=1)]
    about: str = ""


def load_products(path: Path = PRODUCTS_FILE) -> dict[str, Product]:
    try:
        products = msgspec.json.decode(path.read_bytes(), type=_File).products
    except (OSError, msgspec.MsgspecError) as err:
        raise ConfigError(f"{path.name}: {err}") from None
    for name, product in products.items():
        unknown = sorted(set(product.hl7) - VARIABLE_NAMES)
        if unknown:
            raise ConfigError(f"{path.name}: product {name!r}: {unknown[0]} is no HL7 setting")
        try:
            load_hl7_settings(product.hl7)  # the same check as at start-up
        except ConfigError as err:
            raise ConfigError(f"{path.name}: product {name!r}: {err}") from None
    return products
