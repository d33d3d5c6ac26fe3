"""A local, Zoho-CRM-shaped server for tests, demos and rehearsing a job before production.

``World`` is the CRM state, ``create_app`` the ASGI app (truth in ``app.state.sandbox``),
``running_sandbox`` serves it on loopback for end-to-end tests (``restartable_sandbox`` one that
can stop and come back, for outages), ``serve.main`` backs ``batcher sandbox``.
"""

from __future__ import annotations

from .config import SandboxConfig
from .faults import PROFILES, DroppedConnection, FaultProfile
from .state import CallRecord, Sandbox
from .world import CUSTOM_VIEW, MANUAL, Cadence, World

__all__ = [
    "CUSTOM_VIEW", "MANUAL", "PROFILES", "Cadence", "CallRecord", "DroppedConnection",
    "FaultProfile", "RestartableSandbox", "Sandbox", "SandboxConfig", "World", "create_app",
    "restartable_sandbox", "running_sandbox",
]


def __getattr__(name: str):
    # app and serve pull in Starlette/uvicorn: import them only when asked for
    if name == "create_app":
        from .app import create_app
        return create_app
    if name in ("running_sandbox", "restartable_sandbox", "RestartableSandbox"):
        from . import serve
        return getattr(serve, name)
    raise AttributeError(name)
