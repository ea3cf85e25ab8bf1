"""Reading a catalog's text, safely: YAML 1.2 scalars (only true and false are
booleans, so a key `on:` stays the text "on"), no aliases (a few hundred bytes
of nested aliases expand to gigabytes, and a self-referencing anchor never
ends), keys are text, and only plain data: no `!!binary`, `!!set` or other tags
that build Python objects. Dates stay: the offers' start and end use them.
JSON is YAML, so a JSON catalog goes the same way. Every refusal is a problem
with its line or path, never a traceback."""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

import orjson
import yaml

from engine.errors import CatalogError

# libyaml's parser reads a 5000-offer catalog in well under a second where the
# pure-Python one takes ten, blocking the event loop during a reload.
_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
BOOL = "tag:yaml.org,2002:bool"
REFUSED_TAGS = {
    "tag:yaml.org,2002:binary": "!!binary",
    "tag:yaml.org,2002:set": "!!set",
    "tag:yaml.org,2002:omap": "!!omap",
    "tag:yaml.org,2002:pairs": "!!pairs",
}

# Offer content is answered to browsers as JSON: bounded so one offer cannot
# make every decide of its placement huge.
MAX_CONTENT_BYTES = 16 * 1024
MAX_CONTENT_DEPTH = 8


class CatalogLoader(_BASE):
    """The safe loader with YAML 1.2's booleans and the object-building tags refused."""


CatalogLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != BOOL]
    for first, resolvers in _BASE.yaml_implicit_resolvers.items()
}
CatalogLoader.add_implicit_resolver(BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _refuse(loader: CatalogLoader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None, f"{REFUSED_TAGS[node.tag]} is not allowed: a catalog holds plain data", node.start_mark)


for _tag in REFUSED_TAGS:
    CatalogLoader.add_constructor(_tag, _refuse)


def parse_catalog_text(text: str | bytes, source: str = "catalog") -> dict:
    """The catalog's text as plain data, or CatalogError naming where it is not."""
    try:
        for event in yaml.parse(text, Loader=CatalogLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise CatalogError(source, [(f"line {mark.line + 1}, column {mark.column + 1}",
                                             f"YAML aliases (*{event.anchor}) are not allowed: write the value out")])
        spec = yaml.load(text, Loader=CatalogLoader)  # noqa: S506 - a safe loader, aliases refused above
        if not isinstance(spec, dict):
            raise CatalogError(source, [("(document)", "a catalog is a mapping with placements, offers, …")])
        problems: list[tuple[str, str]] = []
        _check_keys(spec, "", problems)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        raise CatalogError(source, [(where, f"not valid YAML/JSON: {getattr(exc, 'problem', exc)}")]) from None
    except (ValueError, OverflowError) as exc:  # a date that does not exist: 2024-02-30
        raise CatalogError(source, [("(document)", f"a value YAML cannot read: {exc}")]) from None
    except RecursionError:
        raise CatalogError(source, [("(document)", "nested too deep")]) from None
    if problems:
        raise CatalogError(source, problems[:50])
    return spec


def _check_keys(value: Any, path: str, problems: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str):
                problems.append((where, f"keys are text: {key!r} was read as a {type(key).__name__}; "
                                        "quote it"))
            _check_keys(item, where, problems)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_keys(item, f"{path}[{i}]", problems)


def plain_json_problem(value: Any) -> str | None:
    """None if `value` is JSON data within the content limits, else why not."""
    def walk(item: Any, depth: int) -> str | None:
        if depth > MAX_CONTENT_DEPTH:
            return f"nested deeper than {MAX_CONTENT_DEPTH} levels"
        if item is None or isinstance(item, bool | str):
            return None
        if isinstance(item, int):
            return None if -(2**63) <= item < 2**63 else f"{item} is past 64 bits"
        if isinstance(item, float):
            return None if math.isfinite(item) else f"{item} is not a finite number"
        if isinstance(item, dt.date):
            return f"{item.isoformat()} was read as a date: quote it"
        if isinstance(item, list):
            return next((why for x in item if (why := walk(x, depth + 1))), None)
        if isinstance(item, dict):
            return next((why for x in item.values() if (why := walk(x, depth + 1))), None)
        return f"not JSON data ({type(item).__name__})"

    why = walk(value, 1)
    if why is None and len(orjson.dumps(value)) > MAX_CONTENT_BYTES:
        why = f"larger than {MAX_CONTENT_BYTES // 1024} KB as JSON"
    return why
