"""Where a catalog problem is in its text: the line of the value a problem's
path names ("offers[3].when.trait"), so an editor can point at it. Pure."""

from __future__ import annotations

import re

import yaml

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_AT = re.compile(r"line (\d+)")


def line_of(text: str, path: str) -> int | None:
    """1-based line of `path` in `text`, or of the deepest part of it found;
    None for a path that names no place ("(catalog)") or text that does not parse."""
    already = _AT.match(path)
    if already:  # a YAML syntax problem says its own line
        return int(already.group(1))
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError, ValueError):
        return None
    if node is None or path.startswith("("):
        return None
    line = None
    for name, index in _STEP.findall(path):
        child = None
        if name and isinstance(node, yaml.MappingNode):
            child = next((value for key, value in node.value
                          if isinstance(key, yaml.ScalarNode) and key.value == name), None)
            if child is None:  # an unknown field is a problem at its key
                key = next((key for key, _ in node.value if isinstance(key, yaml.ScalarNode) and key.value == name),
                           None)
                return key.start_mark.line + 1 if key is not None else line
        elif index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
            child = node.value[int(index)]
        if child is None:
            return line
        node, line = child, child.start_mark.line + 1
    return line


def with_lines(text: str, problems: list[tuple[str, str]]) -> list[dict]:
    """Problems as the API answers them: path, reason and line."""
    return [{"path": path, "reason": reason, "line": line_of(text, path)} for path, reason in problems]
