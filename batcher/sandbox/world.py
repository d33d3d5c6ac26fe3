"""The sandbox's CRM state: modules with records, cadences with their types, and enrollments.

A world is plain data so that a test can build exactly the situation it needs (a non-manual cadence,
a record enrolled in nothing) and a demo can be rebuilt from an input file or a seed.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANUAL = "manual_enrollment"
CUSTOM_VIEW = "custom_view"
CADENCE_TYPES = (MANUAL, CUSTOM_VIEW)

#: modules every org has; custom modules (``Partners__c``) exist when a world names them
STANDARD_MODULES = ("Leads", "Contacts", "Deals", "Vendors")

_ORG_PREFIX = "554023"  # Zoho ids share an org-specific prefix; the rest is a sequence


@dataclass(frozen=True, slots=True)
class Cadence:
    id: str
    name: str
    module: str
    type: str = MANUAL
    active: bool = True
    published: bool = True

    @property
    def manual(self) -> bool:
        return self.type == MANUAL


@dataclass
class World:
    """Mutable CRM state. ``enrollments`` holds (module, record_id, cadence_id) triples."""

    records: dict[str, set[str]] = field(default_factory=dict)
    cadences: dict[str, Cadence] = field(default_factory=dict)
    enrollments: set[tuple[str, str, str]] = field(default_factory=set)
    _next_id: int = field(default=1, repr=False)

    # ------------------------------------------------------------------ building

    def new_id(self) -> str:
        """A fresh 18-digit id, unique within this world."""
        while True:
            candidate = f"{_ORG_PREFIX}{self._next_id:012d}"
            self._next_id += 1
            if candidate not in self.cadences and not any(
                candidate in ids for ids in self.records.values()
            ):
                return candidate

    def add_record(self, module: str, record_id: str | None = None) -> str:
        """Add a record (not enrolled anywhere) and return its id."""
        record_id = record_id if record_id is not None else self.new_id()
        self.records.setdefault(module, set()).add(str(record_id))
        return str(record_id)

    def add_cadence(self, module: str, type: str = MANUAL, cadence_id: str | None = None,
                    name: str | None = None, active: bool = True) -> Cadence:
        """Add a cadence of ``module``; ``type=CUSTOM_VIEW`` makes one that refuses un-enrolment."""
        if type not in CADENCE_TYPES:
            raise ValueError(f"cadence type must be one of {CADENCE_TYPES}, not {type!r}")
        cadence_id = str(cadence_id) if cadence_id is not None else self.new_id()
        cadence = Cadence(id=cadence_id, name=name or f"Cadence {cadence_id[-6:]}",
                          module=module, type=type, active=active)
        self.cadences[cadence_id] = cadence
        self.records.setdefault(module, set())
        return cadence

    def enroll(self, module: str, record_id: str, cadence_id: str) -> None:
        self.records.setdefault(module, set()).add(record_id)
        self.enrollments.add((module, record_id, cadence_id))

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str, str]]) -> World:
        """Every (module, record_id, cadence_id) enrolled; each new cadence a manual one.

        A cadence id seen under two modules keeps the first module; pairs naming it under the other
        module stay un-enrollable (INVALID_DATA), as they would in a real org. A module is one
        module in any letter case (``partners__c`` is ``Partners__c``), as Zoho names it.
        """
        world = cls()
        spelled: dict[str, str] = {}
        for module, record_id, cadence_id in pairs:
            module, record_id, cadence_id = str(module), str(record_id), str(cadence_id)
            if module not in spelled:
                spelled[module] = world.module_named(module) or module
            module = spelled[module]
            if cadence_id not in world.cadences:
                world.add_cadence(module, MANUAL, cadence_id=cadence_id)
            world.enroll(module, record_id, cadence_id)
        return world

    @classmethod
    def generate(cls, seed: int, modules: Iterable[str] = ("Leads", "Contacts", "Deals"),
                 records_per_module: int = 50, manual_per_module: int = 3,
                 custom_view_per_module: int = 1, enroll_rate: float = 0.5) -> World:
        """A reproducible org: the same arguments always give the same world."""
        rng = random.Random(seed)
        world = cls()
        names = ("Welcome", "Nurture", "Re-engage", "Onboarding", "Renewal", "Win-back", "Upsell")
        for module in modules:
            manual = [
                world.add_cadence(module, MANUAL, name=f"{rng.choice(names)} {module} {i + 1}")
                for i in range(manual_per_module)
            ]
            for i in range(custom_view_per_module):
                world.add_cadence(module, CUSTOM_VIEW, name=f"View-driven {module} {i + 1}")
            for _ in range(records_per_module):
                record_id = world.add_record(module)
                for cadence in manual:
                    if rng.random() < enroll_rate:
                        world.enroll(module, record_id, cadence.id)
        return world

    # ------------------------------------------------------------------ queries

    def module_named(self, name: str) -> str | None:
        """The module's canonical API name for a URL segment (Zoho accepts any letter case)."""
        known = {m.lower(): m for m in (*STANDARD_MODULES, *self.records)}
        return known.get(name.lower())

    def copy(self) -> World:
        return World(records={m: set(ids) for m, ids in self.records.items()},
                     cadences=dict(self.cadences), enrollments=set(self.enrollments),
                     _next_id=self._next_id)

    # ------------------------------------------------------------------ files

    def to_json(self) -> dict:
        return {
            "records": {m: sorted(ids) for m, ids in sorted(self.records.items())},
            "cadences": [asdict(c) for c in self.cadences.values()],
            "enrollments": sorted(list(e) for e in self.enrollments),
        }

    @classmethod
    def from_json(cls, data: dict) -> World:
        world = cls()
        for module, ids in data.get("records", {}).items():
            for record_id in ids:
                world.add_record(module, str(record_id))
        for c in data.get("cadences", []):
            world.cadences[str(c["id"])] = Cadence(
                id=str(c["id"]), name=c["name"], module=c["module"], type=c.get("type", MANUAL),
                active=c.get("active", True), published=c.get("published", True))
            world.records.setdefault(c["module"], set())
        for module, record_id, cadence_id in data.get("enrollments", []):
            world.enroll(module, str(record_id), str(cadence_id))
        return world

    def dump(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> World:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
