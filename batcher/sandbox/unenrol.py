"""What Zoho answers to one un-enrol request body, as a pure function of the world.

The caller applies ``Answer.remove``; nothing here mutates the world, so an answer is either applied
whole or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import product

import orjson

from ..models import MAX_CADENCES_PER_CALL, MAX_RECORDS_PER_CALL
from .world import World

Triple = tuple[str, str, str]

SUCCESS_MESSAGE = "records manually unenrolled"
SCHEDULED_MESSAGE = "un-enrolment of the records from the cadences is in progress."


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict
    #: summary for the truth log: the error code, or SUCCESS / MIXED / SCHEDULED
    code: str
    #: (module, record_id, cadence_id) triples this call un-enrolls
    remove: tuple[Triple, ...] = ()


@dataclass(frozen=True, slots=True)
class Parsed:
    ids: list
    cadence_ids: list


def error(code: str, message: str, details: dict | None = None) -> dict:
    return {"code": code, "details": details or {}, "message": message, "status": "error"}


def whole_request_error(code: str, message: str, details: dict, wrapped: bool) -> Answer:
    """A 400 refusing the whole call; Zoho sends it bare or as the single entry of ``data[]``."""
    body = error(code, message, details)
    return Answer(400, {"data": [body]} if wrapped else body, code)


def without_paths(answer: Answer) -> Answer:
    """A whole-call refusal (a bare error, or the single entry of ``data[]``) naming no element:
    ``json_path`` and ``api_name`` dropped from its details."""
    if answer.status != 400:
        return answer
    body = answer.body
    entries = body.get("data") if "data" in body else [body]
    if len(entries) != 1 or entries[0].get("status") != "error":
        return answer
    details = {k: v for k, v in entries[0]["details"].items()
               if k not in ("json_path", "api_name")}
    entry = {**entries[0], "details": details}
    return replace(answer, body={"data": [entry]} if "data" in body else entry)


def listed(body: object, key: str) -> list | None:
    """The list under ``key`` when the body has one (for the truth log, even if invalid)."""
    value = body.get(key) if isinstance(body, dict) else None
    return value if isinstance(value, list) else None


def parse_body(raw: bytes, wrap: Callable[[str], bool]) -> Parsed | Answer:
    """Validate the request body's shape and limits; an Answer means the call is refused."""
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return whole_request_error("INVALID_DATA", "the request body is not valid JSON",
                                   {"expected_data_type": "jsonobject"}, wrap("body"))
    if not isinstance(body, dict):
        return whole_request_error("INVALID_DATA", "the request body must be a JSON object",
                                   {"expected_data_type": "jsonobject"}, wrap("body"))
    for key in ("ids", "cadences_ids"):
        value = body.get(key)
        if value is None or value == []:
            return whole_request_error("MANDATORY_NOT_FOUND", "required field not found",
                                       {"api_name": key, "json_path": f"$.{key}"}, wrap(key))
        if not isinstance(value, list):
            return whole_request_error(
                "INVALID_DATA", "invalid data",
                {"api_name": key, "json_path": f"$.{key}", "expected_data_type": "jsonarray"},
                wrap(key))
    ids, cadence_ids = body["ids"], body["cadences_ids"]
    over = [(key, limit) for key, value, limit in (
        ("ids", ids, MAX_RECORDS_PER_CALL), ("cadences_ids", cadence_ids, MAX_CADENCES_PER_CALL))
        if len(value) > limit]
    if len(over) == 1:
        (key, limit), = over
        return whole_request_error(
            "LIMIT_EXCEEDED", f"more than {limit} {key} given",
            {"api_name": key, "json_path": f"$.{key}", "limit": limit, "limit_due_to": key},
            wrap(f"limit:{key}"))
    if over:
        # the page: more than 5 cadence ids "or more than 100 record ids or both", see
        # limit_due_to — which then names both arrays (a list, their limits in step)
        return whole_request_error(
            "LIMIT_EXCEEDED", f"more than {MAX_RECORDS_PER_CALL} ids and more than "
            f"{MAX_CADENCES_PER_CALL} cadences_ids given",
            {"limit": [limit for _, limit in over], "limit_due_to": [key for key, _ in over]},
            wrap("limit:both"))
    for key, value in (("ids", ids), ("cadences_ids", cadence_ids)):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                return whole_request_error(
                    "INVALID_DATA", "invalid data",
                    {"api_name": key, "json_path": f"$.{key}[{i}]", "expected_data_type": "string"},
                    wrap(f"type:{key}:{i}"))
    return Parsed(ids, cadence_ids)


def answer_unenrol(world: World, module: str, ids: list[str], cadence_ids: list[str], *,
                   shape: str = "v7", scheduled: bool = False,
                   wrap: Callable[[str], bool] = lambda key: False) -> Answer:
    """Zoho's answer to un-enrolling ``ids`` from ``cadence_ids`` in ``module``.

    A known record removed from no cadence answers SUCCESS with an empty ``details.cadences``: the
    call succeeded, there was nothing to remove (the client reports it ``not_enrolled``).
    """
    for j, cadence_id in enumerate(cadence_ids):
        cadence = world.cadences.get(cadence_id)
        path = {"api_name": "cadences_ids", "json_path": f"$.cadences_ids[{j}]"}
        if cadence is None or cadence.module != module:
            return whole_request_error("INVALID_DATA", "given id seems to be invalid", path,
                                       wrap(f"cadence:{cadence_id}"))
        if not cadence.manual:
            return whole_request_error(
                "NOT_ALLOWED", "manual un-enrolment is allowed only for manual enrollment cadences",
                path, wrap(f"type:{cadence_id}"))
    cadences = [world.cadences[c] for c in dict.fromkeys(cadence_ids)]
    known = world.records.get(module, set())
    if shape == "v8" and not scheduled:
        for i, record_id in enumerate(ids):
            if record_id not in known:
                return whole_request_error(
                    "INVALID_DATA", "given id seems to be invalid",
                    {"api_name": "ids", "json_path": f"$.ids[{i}]"}, wrap(f"record:{record_id}"))

    # the enrolled pairs first, in one pass over the set; a record named twice gets its removals
    # on its first mention only, as Zoho removes a pair once
    enrolled = world.enrollments
    candidates = product((module,), dict.fromkeys(r for r in ids if r in known),
                         [c.id for c in cadences])
    remove = dict.fromkeys(t for t in candidates if t in enrolled)
    listed = {c.id: {"name": c.name, "id": c.id} for c in cadences}
    removed_of: dict[str, list[dict]] = {}
    for _, record_id, cadence_id in remove:
        removed_of.setdefault(record_id, []).append(listed[cadence_id])
    entries = []
    for i, record_id in enumerate(ids):
        if record_id not in known:
            entries.append(error("INVALID_DATA", "given id seems to be invalid",
                                 {"api_name": "ids", "json_path": f"$.ids[{i}]"}))
            continue
        removed = removed_of.pop(record_id, [])
        entries.append({"code": "SUCCESS", "details": {"cadences": removed, "id": record_id},
                        "message": SUCCESS_MESSAGE, "status": "success"})

    if scheduled:
        body = {"data": [{"code": "SCHEDULED", "details": {}, "message": SCHEDULED_MESSAGE,
                          "status": "success"}]}
        return Answer(202, body, "SCHEDULED", tuple(remove))
    if shape == "v8":
        body = {"cadences": [{"code": "success", "details": {}, "message": SUCCESS_MESSAGE,
                              "status": "success"} for _ in cadences]}
        return Answer(200, body, "SUCCESS", tuple(remove))
    ok = sum(e["status"] == "success" for e in entries)
    status, code = ((200, "SUCCESS") if ok == len(entries)
                    else (207, "MIXED") if ok else (400, "INVALID_DATA"))
    return Answer(status, {"data": entries}, code, tuple(remove))
