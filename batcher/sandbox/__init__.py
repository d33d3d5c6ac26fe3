"""A local, Zoho-CRM-shaped server for tests, demos and rehearsing a job before production.

``World`` is the CRM state, ``create_app`` the ASGI app (truth in ``app.state.sandbox``),
``running_sandbox`` serves it on loopback for end-to-end tests, ``serve.main`` backs
``batcher sandbox``.
"""

from __future__ import annotations

from .config import SandboxConfig
from .faults import PROFILES, DroppedConnection, FaultProfile
from .state import CallRecord, Sandbox
from .world import CUSTOM_VIEW, MANUAL, Cadence, World

__all__ = [
    "CUSTOM_VIEW", "MANUAL", "PROFILES", "Cadence", "CallRecord", "DroppedConnection",
    "FaultProfile", "Sandbox", "SandboxConfig", "World", "create_app", "running_sandbox",
]


def __getattr__(name: str):
    # app and serve pull in Starlette/uvicorn: import them only when asked for
    if name == "create_app":
        from .app import create_app
        return create_app
    if name == "running_sandbox":
        from .serve import running_sandbox
        return running_sandbox
    raise AttributeError(name)
