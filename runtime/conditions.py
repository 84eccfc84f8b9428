"""Conditions: when a validation applies, and when a sheet is skipped.

Owns two small languages over a sheet's variables, both parsed without Python
``eval`` so a score can never run code through them:

- the validation ``condition``: clauses ``name op integer`` joined by `` and ``
  (SCORE_FORMAT "Validations"). A clause that cannot be parsed is a
  ``ConditionError``, never silently true.
- the ``skip_when`` expression (SEMANTICS S5): literals, variable names, ``.key``
  and ``[index]`` lookups into mappings and lists, comparisons (``== != < <= > >=
  in``, ``not in``), ``and`` / ``or`` / ``not`` and parentheses. Nothing else: no
  calls, no attributes of Python objects.

It decides nothing about sheets itself (``runtime.machine`` does) and runs no
commands (``skip_when_command`` is run by the job actor).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from runtime.errors import ConditionError

# --- validation conditions ---------------------------------------------------------------

_CLAUSE = re.compile(r"\s*([A-Za-z_]\w*)\s*(>=|<=|==|!=|>|<)\s*(-?\d+)\s*")
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}


@dataclass(frozen=True, slots=True)
class Clause:
    """One ``name op integer`` test of a validation condition."""

    name: str
    op: str
    value: int

    def holds(self, variables: Mapping[str, Any]) -> bool:
        actual = _as_int(variables.get(self.name))
        if actual is None:
            return False
        return _COMPARE[self.op](actual, self.value)

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.value}"


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


@lru_cache(maxsize=4096)
def parse_validation_condition(text: str) -> tuple[Clause, ...]:
    """Parse ``"stage == 2 and instance >= 1"`` into clauses; raise on anything else."""
    if not text.strip():
        raise ConditionError(
            "a condition must not be empty; write clauses like 'sheet_num >= 2' joined by ' and '"
        )
    clauses = []
    for part in text.strip().split(" and "):
        match = _CLAUSE.fullmatch(part)
        if match is None:
            raise ConditionError(
                f"cannot parse condition clause {part.strip()!r}: expected "
                "'<variable> <op> <integer>' with op one of >= <= == != > <, "
                "clauses joined by ' and '"
            )
        name, op, value = match.groups()
        clauses.append(Clause(name, op, int(value)))
    return tuple(clauses)


def condition_holds(condition: str | None, variables: Mapping[str, Any]) -> bool:
    """True when every clause holds; a missing or non-integer variable fails its clause."""
    if condition is None:
        return True
    return all(clause.holds(variables) for clause in parse_validation_condition(condition))


# --- skip_when expressions -----------------------------------------------------------------

MAX_EXPRESSION_CHARS = 2000
_MAX_DEPTH = 40

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>\d+\.\d*|\.\d+|\d+)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<name>[A-Za-z_]\w*)
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|\.|,|-)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in"}
_LITERALS: dict[str, Any] = {
    "true": True,
    "True": True,
    "false": False,
    "False": False,
    "none": None,
    "None": None,
    "null": None,
}
_STRING_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # number | string | name | keyword | op | end
    text: str
    position: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ConditionError(
                f"unexpected character {text[position]!r} at position {position + 1}"
            )
        kind = match.lastgroup or ""
        if kind != "space":
            word = match.group()
            if kind == "name" and word in _KEYWORDS:
                kind = "keyword"
            tokens.append(_Token(kind, word, position))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


# The expression tree: small tuples, evaluated by ``_evaluate``.
Node = tuple[Any, ...]


class _Parser:
    def __init__(self, text: str) -> None:
        self._tokens = _tokenize(text)
        self._index = 0
        self._depth = 0

    def parse(self) -> Node:
        node = self._or()
        token = self._peek()
        if token.kind != "end":
            raise ConditionError(f"unexpected {token.text!r} at position {token.position + 1}")
        return node

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _take(self) -> _Token:
        token = self._tokens[self._index]
        self._index += 1
        return token

    def _accept(self, kind: str, text: str) -> bool:
        token = self._peek()
        if token.kind == kind and token.text == text:
            self._index += 1
            return True
        return False

    def _expect(self, text: str) -> None:
        token = self._peek()
        if token.text != text or token.kind not in ("op", "keyword"):
            found = repr(token.text) if token.kind != "end" else "the end"
            raise ConditionError(
                f"expected {text!r} at position {token.position + 1}, found {found}"
            )
        self._index += 1

    def _nested(self) -> None:
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            raise ConditionError(f"expression nested deeper than {_MAX_DEPTH} levels")

    def _or(self) -> Node:
        self._nested()
        node = self._and()
        while self._accept("keyword", "or"):
            node = ("or", node, self._and())
        self._depth -= 1
        return node

    def _and(self) -> Node:
        node = self._not()
        while self._accept("keyword", "and"):
            node = ("and", node, self._not())
        return node

    def _not(self) -> Node:
        if self._accept("keyword", "not"):
            self._nested()
            node = ("not", self._not())
            self._depth -= 1
            return node
        return self._comparison()

    def _comparison(self) -> Node:
        left = self._operand()
        pairs: list[tuple[str, Node]] = []
        while True:
            token = self._peek()
            if token.kind == "op" and token.text in _COMPARE:
                self._take()
                pairs.append((token.text, self._operand()))
            elif token.kind == "keyword" and token.text == "in":
                self._take()
                pairs.append(("in", self._operand()))
            elif (
                token.kind == "keyword"
                and token.text == "not"
                and self._tokens[self._index + 1].text == "in"
            ):
                self._index += 2
                pairs.append(("not in", self._operand()))
            else:
                break
        if not pairs:
            return left
        return ("compare", left, tuple(pairs))

    def _operand(self) -> Node:
        node = self._primary()
        while True:
            if self._accept("op", "."):
                token = self._take()
                if token.kind not in ("name", "keyword"):
                    raise ConditionError(
                        f"expected a key name after '.' at position {token.position + 1}"
                    )
                node = ("lookup", node, ("literal", token.text))
            elif self._accept("op", "["):
                self._nested()
                index = self._or()
                self._depth -= 1
                self._expect("]")
                node = ("lookup", node, index)
            else:
                return node

    def _primary(self) -> Node:
        token = self._take()
        if token.kind == "number":
            value: Any = float(token.text) if "." in token.text else int(token.text)
            return ("literal", value)
        if token.kind == "string":
            return ("literal", _unquote(token.text))
        if token.kind == "name":
            if token.text in _LITERALS:
                return ("literal", _LITERALS[token.text])
            return ("name", token.text)
        if token.kind == "op" and token.text == "-":
            operand = self._primary()
            return ("negate", operand)
        if token.kind == "op" and token.text == "(":
            node = self._or()
            self._expect(")")
            return node
        if token.kind == "op" and token.text == "[":
            items: list[Node] = []
            if not self._accept("op", "]"):
                while True:
                    items.append(self._or())
                    if self._accept("op", "]"):
                        break
                    self._expect(",")
            return ("list", tuple(items))
        found = repr(token.text) if token.kind != "end" else "the end of the expression"
        raise ConditionError(f"expected a value at position {token.position + 1}, found {found}")


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: _STRING_ESCAPES.get(m.group(1), "\\" + m.group(1)), body)


@dataclass(frozen=True, slots=True)
class SkipExpression:
    """A parsed ``skip_when`` expression; ``evaluate`` is cheap and side-effect free."""

    source: str
    tree: Node

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        return _evaluate(self.tree, variables, self.source)


@lru_cache(maxsize=4096)
def parse_skip_expression(text: str) -> SkipExpression:
    """Parse a ``skip_when`` expression; a syntax error is a ``ConditionError``."""
    if not isinstance(text, str) or not text.strip():
        raise ConditionError("a skip_when expression must be a non-empty string")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ConditionError(
            f"a skip_when expression is limited to {MAX_EXPRESSION_CHARS} characters"
        )
    try:
        tree = _Parser(text).parse()
    except ConditionError as exc:
        raise ConditionError(f"cannot parse skip_when expression {text!r}: {exc.message}") from None
    return SkipExpression(text, tree)


def should_skip(expression: str | SkipExpression, variables: Mapping[str, Any]) -> bool:
    """S5: True when the expression is truthy over ``variables``.

    Raises ``ConditionError`` when it cannot be parsed or evaluated (an unknown
    variable or key, or values that cannot be compared); the caller decides
    what an error means (SEMANTICS S5 runs the sheet, as for a failing command).
    """
    parsed = parse_skip_expression(expression) if isinstance(expression, str) else expression
    return bool(parsed.evaluate(variables))


def _evaluate(node: Node, variables: Mapping[str, Any], source: str) -> Any:
    kind = node[0]
    if kind == "literal":
        return node[1]
    if kind == "name":
        name = node[1]
        if name not in variables:
            raise ConditionError(f"skip_when {source!r}: unknown variable {name!r}")
        return variables[name]
    if kind == "and":
        return _evaluate(node[1], variables, source) and _evaluate(node[2], variables, source)
    if kind == "or":
        return _evaluate(node[1], variables, source) or _evaluate(node[2], variables, source)
    if kind == "not":
        return not _evaluate(node[1], variables, source)
    if kind == "negate":
        value = _evaluate(node[1], variables, source)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConditionError(f"skip_when {source!r}: cannot negate {value!r}")
        return -value
    if kind == "list":
        return [_evaluate(item, variables, source) for item in node[1]]
    if kind == "lookup":
        return _lookup(
            _evaluate(node[1], variables, source), _evaluate(node[2], variables, source), source
        )
    if kind == "compare":
        left = _evaluate(node[1], variables, source)
        for op, right_node in node[2]:
            right = _evaluate(right_node, variables, source)
            if not _compare(op, left, right, source):
                return False
            left = right
        return True
    raise ConditionError(f"skip_when {source!r}: unsupported expression")  # pragma: no cover


def _lookup(container: Any, key: Any, source: str) -> Any:
    if isinstance(container, Mapping):
        if key in container:
            return container[key]
        # YAML keys are often integers while expressions write them either way.
        if isinstance(key, str) and key.isdigit() and int(key) in container:
            return container[int(key)]
        if isinstance(key, int) and str(key) in container:
            return container[str(key)]
        raise ConditionError(f"skip_when {source!r}: no key {key!r}")
    if isinstance(container, Sequence) and not isinstance(container, str):
        if (
            isinstance(key, int)
            and not isinstance(key, bool)
            and -len(container) <= key < len(container)
        ):
            return container[key]
        raise ConditionError(f"skip_when {source!r}: no index {key!r}")
    raise ConditionError(
        f"skip_when {source!r}: cannot look up {key!r} in {type(container).__name__}"
    )


def _compare(op: str, left: Any, right: Any, source: str) -> bool:
    try:
        if op == "in":
            return left in right
        if op == "not in":
            return left not in right
        return bool(_COMPARE[op](left, right))
    except TypeError:
        raise ConditionError(
            f"skip_when {source!r}: cannot compare {left!r} {op} {right!r}"
        ) from None


@dataclass(frozen=True, slots=True)
class SkipVerdict:
    """Whether a ready sheet is skipped by its skip condition (S5), and why."""

    skip: bool
    reason: str


def skip_when_verdict(expression: str | None, variables: Mapping[str, Any]) -> SkipVerdict:
    """S5 for ``skip_when``: a truthy expression skips; an error is logged by the caller
    and the sheet runs (as a failing ``skip_when_command`` does)."""
    if expression is None:
        return SkipVerdict(False, "")
    try:
        if should_skip(expression, variables):
            return SkipVerdict(True, f"skip_when: {expression}")
    except ConditionError as exc:
        return SkipVerdict(False, f"skip_when not evaluated, the sheet runs: {exc.message}")
    return SkipVerdict(False, "")


def skip_command_verdict(
    exit_code: int | None, *, timed_out: bool = False, description: str | None = None
) -> SkipVerdict:
    """S5 for ``skip_when_command``: exit 0 skips; non-zero, a timeout or an error runs."""
    if exit_code == 0 and not timed_out:
        return SkipVerdict(True, f"skip_when_command: {description or 'command exited 0'}")
    if timed_out:
        return SkipVerdict(False, "skip_when_command timed out; the sheet runs")
    return SkipVerdict(False, "")
