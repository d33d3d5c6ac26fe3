"""Header → role: which input column holds the record id, the cadence id and the module."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path

from ..errors import InputError
from .options import InputOptions

#: normalised header → role; headers are compared lower-cased with spaces, "_" and "-" removed
_ALIASES = {
    "recordid": "record_id", "id": "record_id", "recordids": "record_id", "ids": "record_id",
    "cadenceid": "cadence_id", "cadencesid": "cadence_id", "cadence": "cadence_id",
    "cadenceids": "cadence_id", "cadencesids": "cadence_id",
    "module": "module", "modulename": "module", "moduleapiname": "module",
}
_FLAGS = {"record_id": "--record-column", "cadence_id": "--cadence-column",
          "module": "--module-column"}


def _normalise_header(name: str) -> str:
    # invisible format characters too (a zero-width space or a BOM pasted with a header from
    # a web page or another file): a header that reads "Module" is the module column
    return "".join(c for c in re.sub(r"[\s_\-]+", "", str(name))
                   if unicodedata.category(c) != "Cf").lower()


def distinct_names(names: Iterable[str]) -> tuple[str, ...]:
    """The columns' names made distinct, as the results carry them: a name the header holds
    again gets `` (2)``, `` (3)``… (the first number whose name the header does not hold
    itself), the first occurrence keeping it. A name the header holds once always keeps it,
    so a column named by a flag or matched to a role is the column of that name."""
    names = list(names)
    given, taken = set(names), set()
    out = []
    for name in names:
        unique, n = name, 1
        while unique in taken or (unique != name and unique in given):
            n += 1
            unique = f"{name} ({n})"
        taken.add(unique)
        out.append(unique)
    return tuple(out)


def _named(options: InputOptions) -> dict[str, str]:
    return {role: name for role, name in (
        ("record_id", options.record_column), ("cadence_id", options.cadence_column),
        ("module", options.module_column)) if name is not None}


def _refuse_twice(path: Path, names: list[str], name: str) -> None:
    """Two columns of one name cannot be told apart by any flag: the user renames one."""
    at = [i + 1 for i, n in enumerate(names) if n == name]
    if len(at) > 1:
        raise InputError(f"{path}: {len(at)} columns are named {name!r} (columns "
                         f"{', '.join(map(str, at))}); rename all but the one that holds the ids")


#: how many rows under a header that names no id column are looked at for the real one
_ROWS_BELOW = 10


def require_columns(path: Path, names: list[str], options: InputOptions,
                    below: Iterable[tuple[int, Sequence[str]]] = (), header_row: int = 1
                    ) -> dict[str, str]:
    """role → column name. A column named by a flag must exist exactly; otherwise a role is the
    one header among its aliases. Raises InputError for a missing column, a role two headers
    match, or a cadence column in a record list (``--cadence`` / ``--all-cadences``).

    ``below``: (row number as a spreadsheet shows it, its cells) of the rows under the header
    (row ``header_row``), read lazily: when the header names no id column and one of the first
    of them would (a title above the column names), the refusal names that row."""
    shown = ", ".join(repr(n) for n in names[:20]) or "none"
    roles: dict[str, str] = {}
    for role, name in _named(options).items():
        if name in roles.values():  # one column cannot hold two of the ids (or an id and a module)
            other = next(r for r, n in roles.items() if n == name)
            raise InputError(f"{path}: {_FLAGS[other]} and {_FLAGS[role]} both name the column "
                             f"{name!r}; each names its own column")
        if name not in names:
            raise InputError(f"{path}: {_FLAGS[role]} {name!r}: no such column; columns found: "
                             f"{shown}")
        _refuse_twice(path, names, name)
        roles[role] = name
    taken = set(roles.values())
    for role in ("record_id", "cadence_id", "module"):
        if role in roles:
            continue
        matches = [n for n in names if _ALIASES.get(_normalise_header(n)) == role
                   and n not in taken]
        if len(matches) > 1 and matches[0] != matches[1]:
            raise InputError(f"{path}: columns {matches[0]!r} and {matches[1]!r} both look like "
                             f"the {role} column; name the one to use with {_FLAGS[role]}")
        if matches:
            _refuse_twice(path, names, matches[0])
            roles[role] = matches[0]
    record_list = bool(options.cadences) or options.all_cadences
    if record_list and "cadence_id" in roles:
        raise InputError(f"{path}: has a cadence column ({roles['cadence_id']!r}); --cadence and "
                         "--all-cadences are for lists of records without one")
    missing = [r for r in ("record_id", "cadence_id") if r not in roles
               and not (r == "cadence_id" and record_list)]
    if missing:
        at = _header_below(path, below, options)
        if at is not None:
            raise InputError(
                f"{path}: row {header_row} ({shown}) is not the column names; row {at[0]} looks "
                f"like them ({', '.join(repr(n) for n in at[1][:20])}): delete the rows above "
                "it, so the column names are the first row, and run again")
        for role in missing:  # its column by name went to a flag of another role
            for other, name in roles.items():
                if _ALIASES.get(_normalise_header(name)) == role:
                    raise InputError(f"{path}: {_FLAGS[other]} takes {name!r}, the {role} "
                                     f"column by its name; name the {role} column with "
                                     f"{_FLAGS[role]}, or give {_FLAGS[other]} another column")
        hint = (" For a list of records without cadences, pass --cadence ID or --all-cadences."
                if missing == ["cadence_id"] else "")
        raise InputError(
            f"{path}: no usable {' or '.join(missing)} column; columns found: {shown}. "
            "Expected record_id (or id, Record Id) and cadence_id (or cadences_id, cadence), "
            f"optionally module; or name them with {', '.join(_FLAGS.values())}.{hint}"
        )
    return roles


def _header_below(path: Path, below: Iterable[tuple[int, Sequence[str]]],
                  options: InputOptions) -> tuple[int, Sequence[str]] | None:
    """The first of the rows ``below`` (row number, cells) that would make a usable header."""
    for at, cells in islice(below, _ROWS_BELOW):
        try:
            require_columns(path, [str(c) for c in cells], options)
        except InputError:
            continue
        return at, cells
    return None
