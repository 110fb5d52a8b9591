"""`pacsor simulator`: a local implementation of the Milvue v3 API, for demos and tests.

It follows the vendored OpenAPI file (milvue-api-v3.openapi.json): uploads are checked and
stored, the status turns from running to done after a few polls, results are Secondary Capture
images derived from the inputs with a burned-in overlay, findings are deterministic JSON.
Faults (HTTP errors, "not ready" results) can be injected for retry tests.

It is an HTTP service of its own, so its modules are named as the admin's are (app: the
routes, server: serving them, settings: its typed configuration); the package keeps them
apart, and nothing on the runtime path imports it.
"""

from pacsor.devtools.simulator.app import create_app
from pacsor.devtools.simulator.server import running_simulator, serve
from pacsor.devtools.simulator.settings import SimulatorSettings, settings_from_env
from pacsor.devtools.simulator.state import SimulatorState, StudySnapshot

__all__ = [
    "SimulatorSettings",
    "SimulatorState",
    "StudySnapshot",
    "create_app",
    "running_simulator",
    "serve",
    "settings_from_env",
]
