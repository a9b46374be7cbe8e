"""In-process reference resolution of a FHIR transaction bundle: what a FHIR server would do.

There is no FHIR server in CI, so this resolves every ``Reference`` of a bundle the way a server
processing the transaction would, and reports each one it could not:

- ``urn:uuid:...``: an entry's ``fullUrl`` (and ``Reference.type`` is that entry's type);
- ``Type?identifier=system|value`` (a conditional reference): exactly one resource of the bundle
  of that type carries that identifier (a server would also search its store; here the bundle
  must hold it);
- a logical reference (``identifier`` only): it names a ``type`` and its identifier has both a
  ``system`` and a ``value`` (what a receiver matches on);
- anything else (``Patient/123``, a bare display) cannot be resolved in-process: reported.

Every Reference is found through the ``fhir.resources`` R4B models, not by key names, so a
reference in any element counts. ``ifNoneExist`` of each entry must name an identifier of its own
resource (a conditional create that would match something else duplicates or misfiles).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.reference import Reference
from pydantic import BaseModel

Json = dict[str, Any]
_CONDITIONAL = re.compile(r"(?P<type>[A-Z][A-Za-z]+)\?identifier=(?P<token>.+)")


def parse_token(token: str) -> tuple[str, str]:
    """``system|value`` of a URL-encoded FHIR token (``\\|`` ``\\,`` ``\\$`` ``\\\\`` escaped)."""
    text = unquote(token)
    parts: list[str] = [""]
    escaped = False
    for char in text:
        if escaped:
            parts[-1] += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            parts.append("")
        else:
            parts[-1] += char
    if len(parts) != 2:
        raise ValueError(f"token {token!r} is not system|value")
    return parts[0], parts[1]


def _references(node: Any, path: str) -> Iterator[tuple[str, Reference]]:
    if isinstance(node, Reference):
        yield path, node
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _references(getattr(node, name), f"{path}.{name}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _references(item, f"{path}[{i}]")


def _identifiers(resource: Json) -> set[tuple[str, str]]:
    return {
        (str(i.get("system", "")), str(i.get("value", "")))
        for i in resource.get("identifier") or []
        if isinstance(i, dict)
    }


def unresolved_references(bundle: Json) -> list[str]:
    """Every reference of ``bundle`` that would not resolve, by path; empty when all do."""
    parsed = Bundle.model_validate(bundle)  # the R4B models find every Reference
    entries = bundle.get("entry") or []
    by_url = {e["fullUrl"]: e["resource"] for e in entries if "fullUrl" in e}
    problems: list[str] = []
    for i, entry in enumerate(entries):
        condition = (entry.get("request") or {}).get("ifNoneExist")
        if condition is None:
            continue
        name, _, token = condition.partition("=")
        if name != "identifier" or parse_token(token) not in _identifiers(entry["resource"]):
            problems.append(f"entry[{i}].request.ifNoneExist names no identifier of its resource")
    for path, reference in _references(parsed, "Bundle"):
        problems.extend(_resolve(path, reference, entries, by_url))
    return problems


def _resolve(
    path: str, reference: Reference, entries: list[Json], by_url: dict[str, Json]
) -> list[str]:
    literal = reference.reference
    if literal is not None:
        if literal.startswith("urn:uuid:"):
            target = by_url.get(literal)
            if target is None:
                return [f"{path}: {literal} is no entry's fullUrl"]
            if reference.type is not None and reference.type != target["resourceType"]:
                return [
                    f"{path}: type {reference.type} but the entry is a {target['resourceType']}"
                ]
            return []
        match = _CONDITIONAL.fullmatch(literal)
        if match is None:
            return [f"{path}: {literal!r} cannot be resolved within the bundle"]
        wanted = parse_token(match["token"])
        found = [
            e["resource"]
            for e in entries
            if e["resource"]["resourceType"] == match["type"]
            and wanted in _identifiers(e["resource"])
        ]
        return [] if len(found) == 1 else [f"{path}: {literal!r} matches {len(found)} resources"]
    identifier = reference.identifier
    if identifier is None:
        return [f"{path}: neither a reference nor an identifier"]
    if not reference.type:
        return [f"{path}: a logical reference without a type"]
    if not identifier.system or not identifier.value:
        return [f"{path}: a logical reference needs identifier.system and identifier.value"]
    return []
