"""YAML configuration files with line numbers, and errors located in them.

Owns parsing a score's or an instrument profile's YAML so that every key path
keeps the line it came from (and repeated keys are noticed), refusing
documents that expand through aliases beyond ``MAX_YAML_NODES``, and turning a
pydantic ``ValidationError`` into the caller's ``ConfigError`` type with the
key path, the file, the line and a message a user can act on ("unknown key
'promt_flag'; did you mean 'prompt_flag'?"). It knows nothing of what a score
or a profile means: the caller passes its root model and its error type.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from runtime.errors import ConfigError

__all__ = [
    "MAX_YAML_NODES",
    "KeyLines",
    "duplicate_notes",
    "line_at",
    "located_validation_error",
    "parse_yaml",
]

ErrorType = TypeVar("ErrorType", bound=ConfigError)
# The line of every key path of a document: ("sheet", "size") -> 4.
KeyLines = dict[tuple[Any, ...], int]

# Alias expansion beyond this many nodes is refused: "billion laughs" documents
# would otherwise make validation run for hours.
MAX_YAML_NODES = 2_000_000


class _LineMap(dict[Any, Any]):
    """A YAML mapping that remembers the line of each of its keys."""

    __slots__ = ("key_lines",)

    def __init__(self) -> None:
        super().__init__()
        self.key_lines: dict[Any, int] = {}


# libyaml's parser is about ten times faster than the pure-Python one; both keep marks.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LineLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    duplicates: list[tuple[_LineMap, Any, int]]


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> Iterator[_LineMap]:
    mapping = _LineMap()
    yield mapping
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found a key that is a list or mapping",
                key_node.start_mark,
            )
        try:
            seen = key in mapping
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "found a key that cannot be used as a key",
                key_node.start_mark,
            ) from None
        if seen:
            loader.duplicates.append((mapping, key, key_node.start_mark.line + 1))
        mapping[key] = loader.construct_object(value_node, deep=False)
        mapping.key_lines[key] = key_node.start_mark.line + 1


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _expanded_size(root: yaml.Node) -> int:
    """Nodes in the document once aliases are expanded, computed without expanding them."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                children.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if children_done:
            sizes[id(node)] = 1 + sum(sizes.get(id(child), 1) for child in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                return sizes[id(node)]
        else:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes.get(id(root), 1)


def parse_yaml(
    text: str, *, source_name: str, error: type[ErrorType]
) -> tuple[Any, KeyLines, list[tuple[tuple[Any, ...], int]]]:
    """Parse YAML; return the data, the line of every key path, and duplicated
    keys (path, line). Every problem is an ``error`` naming ``source_name``."""
    loader = _LineLoader(text)
    loader.duplicates = []
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        if _expanded_size(node) > MAX_YAML_NODES:
            raise error(
                f"the document expands to more than {MAX_YAML_NODES} values through "
                "YAML aliases; write it out or simplify it",
                source=source_name,
            )
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"invalid YAML: {problem}", source=source_name, line=line) from None
    except RecursionError:
        raise error("invalid YAML: nested too deeply", source=source_name) from None
    finally:
        loader.dispose()
    lines: dict[tuple[Any, ...], int] = {}
    _index_lines(data, (), lines)
    duplicate_paths = [
        ((*path, key), line)
        for mapping, key, line in loader.duplicates
        for path in _paths_of(data, mapping)
    ]
    try:
        plain = _plain(data)
    except RecursionError:
        raise error("invalid YAML: nested too deeply", source=source_name) from None
    return plain, lines, duplicate_paths


def _plain(value: Any) -> Any:
    """The document with plain dicts: line bookkeeping stays out of the loaded score."""
    if isinstance(value, dict):
        return {key: _plain(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_plain(child) for child in value]
    return value


def _index_lines(data: Any, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> None:
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, path)]
    seen: set[int] = set()
    while stack:
        value, where = stack.pop()
        if id(value) in seen:  # a YAML alias: index the first occurrence only
            continue
        if isinstance(value, _LineMap):
            seen.add(id(value))
            for key, child in value.items():
                lines[(*where, key)] = value.key_lines.get(key, 0)
                stack.append((child, (*where, key)))
        elif isinstance(value, list):
            seen.add(id(value))
            for index, child in enumerate(value):
                if isinstance(child, _LineMap) and child.key_lines:
                    lines[(*where, index)] = min(child.key_lines.values())
                stack.append((child, (*where, index)))


def _paths_of(data: Any, target: Any) -> list[tuple[Any, ...]]:
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    seen: set[int] = set()
    while stack:
        value, where = stack.pop()
        if value is target:
            return [where]
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, dict):
            stack.extend((child, (*where, key)) for key, child in value.items())
        elif isinstance(value, list):
            stack.extend((child, (*where, index)) for index, child in enumerate(value))
    return []


def duplicate_notes(duplicates: Sequence[tuple[tuple[Any, ...], int]]) -> list[str]:
    """A warning per repeated key that ``parse_yaml`` found."""
    return [
        f"{'.'.join(str(part) for part in path)}: key appears more than once (line {line}); "
        "the last value wins"
        for path, line in duplicates
    ]


def line_at(lines: Mapping[tuple[Any, ...], int], key_path: Sequence[Any]) -> int | None:
    """The line of the deepest key along ``key_path`` that the document has."""
    path = tuple(key_path)
    while path:
        line = lines.get(path)
        if line is not None:
            return line
        path = path[:-1]
    return None


# --- validation errors, located ------------------------------------------------------------


def located_validation_error(
    exc: ValidationError,
    data: Mapping[str, Any],
    *,
    source: str,
    lines: Mapping[tuple[Any, ...], int],
    root: type[BaseModel],
    error: type[ErrorType],
) -> ErrorType:
    """``exc`` as one ``error``: its first problem (a misspelt key before the
    required key it stands for), where it is, and how many more there are."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first.get("type") == "missing":
        # A required key is often missing because it is misspelt next to it: say that.
        parent = tuple(first.get("loc", ()))[:-1]
        for problem in errors:
            loc = tuple(problem.get("loc", ()))
            if problem.get("type") == "extra_forbidden" and loc[:-1] == parent:
                first = problem
                break
    kind = str(first.get("type", ""))
    path = _data_path(data, tuple(first.get("loc", ())))
    if kind == "missing" and first.get("loc"):
        path = (*path, first["loc"][-1])
    message = _describe(first, path, root)
    more = len(errors) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    key_path = ".".join(str(part) for part in path) or None
    return error(message, key_path=key_path, source=source, line=line_at(lines, path))


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The steps of a pydantic ``loc`` that exist in the data (drops union tags)."""
    path: list[Any] = []
    current = data
    for step in loc:
        if isinstance(current, Mapping):
            key = _matching_key(current, step)
            if key is _MISSING:
                continue
            path.append(key)
            current = current[key]
        elif isinstance(current, list) and isinstance(step, int) and 0 <= step < len(current):
            path.append(step)
            current = current[step]
    return tuple(path)


_MISSING = object()


def _matching_key(mapping: Mapping[Any, Any], step: Any) -> Any:
    if step in mapping:
        return step
    text = str(step)
    for key in mapping:
        if str(key) == text:
            return key
    return _MISSING


def _describe(error: Mapping[str, Any], path: tuple[Any, ...], root: type[BaseModel]) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        name = str(path[-1]) if path else "?"
        allowed = _allowed_keys(root, path[:-1])
        message = f"unknown key '{name}'"
        close = difflib.get_close_matches(name, allowed, n=1)
        if close:
            message += f"; did you mean '{close[0]}'?"
        elif allowed:
            message += "; expected one of: " + ", ".join(allowed)
        return message
    if kind == "missing":
        return "required key is missing"
    message = str(error.get("msg", "invalid value"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    message = re.sub(r" or instance of \w+", "", message)
    message = (
        message.replace("Input should be", "expected")
        .replace("a valid dictionary", "a mapping of keys")
        .replace("expected greater", "expected a value greater")
        .replace("expected less", "expected a value less")
    )
    value = error.get("input")
    if not isinstance(value, Mapping | list) and kind not in ("value_error", "assertion_error"):
        message += f" (got {value!r})"
    return message


def _allowed_keys(root: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    model = _model_at(root, path)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _model_at(root: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    current: Any = root
    for step in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            fields = current.model_fields
            field = next((f for name, f in fields.items() if step in (name, f.alias)), None)
            if field is None:
                return None
            current = field.annotation
        elif typing.get_origin(current) is dict:
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) is list:
            current = typing.get_args(current)[0]
        else:
            return None
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin is typing.Union or origin is types.UnionType:
            options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation
