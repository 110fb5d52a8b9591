"""The JetStream streams pacsor needs, as the JSON the `nats` CLI takes with `--config`.

    nats stream add --config streams/PACSOR.json

pacsor applies every file here at start (create, or update when the file changed), so the
files are the single declaration of the broker's layout. The OBJ_* streams are the
object-store buckets (PACSOR_INSTANCES, PACSOR_RESULTS) in the layout `nats object` expects.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def stream_definitions() -> dict[str, dict[str, Any]]:
    """Every stream definition, by stream name."""
    definitions: dict[str, dict[str, Any]] = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            config = json.loads(entry.read_text())
            definitions[config["name"]] = config
    return definitions
