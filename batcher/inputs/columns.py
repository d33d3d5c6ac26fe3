"""Header → role: which input column holds the record id, the cadence id and the module."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError

#: normalised header → role; headers are compared lower-cased with spaces, "_" and "-" removed
_ALIASES = {
    "recordid": "record_id", "id": "record_id", "recordids": "record_id", "ids": "record_id",
    "cadenceid": "cadence_id", "cadencesid": "cadence_id", "cadence": "cadence_id",
    "cadenceids": "cadence_id", "cadencesids": "cadence_id",
    "module": "module", "modulename": "module", "moduleapiname": "module",
}


def _normalise_header(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).strip().lstrip("\ufeff")).lower()


def _roles(names: list[str]) -> dict[str, str]:
    """role → original column name (first match wins, exact role names before aliases)."""
    roles: dict[str, str] = {}
    for name in sorted(names, key=lambda n: _normalise_header(n) not in ("recordid", "cadenceid")):
        role = _ALIASES.get(_normalise_header(name))
        if role and role not in roles:
            roles[role] = name
    return roles


def require_columns(path: Path, names: list[str]) -> dict[str, str]:
    roles = _roles(names)
    missing = [r for r in ("record_id", "cadence_id") if r not in roles]
    if missing:
        shown = ", ".join(repr(n) for n in names[:20]) or "none"
        raise InputError(
            f"{path}: no usable {' or '.join(missing)} column; columns found: {shown}. "
            "Expected record_id (or id, Record Id) and cadence_id (or cadences_id, cadence), "
            "optionally module."
        )
    return roles

