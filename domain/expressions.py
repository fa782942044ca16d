"""A safe expression language over a deal document, built on JMESPath.

Validation rules (``stages[].validation[].expr``) and automation conditions
(``automations[].conditions[].expr``) are JMESPath expressions evaluated against
:meth:`domain.deal.DealState.document`, e.g. ``value > `1000` && fields.region == 'EU'``.

JMESPath cannot call Python, read files or loop forever, so an admin's expression is safe to run
inside a Temporal workflow. Everything here is pure and deterministic.

Two deliberate refinements over plain ``jmespath.search``:

* :func:`compile_expression` also rejects calls to unknown functions and calls with the wrong number
  of arguments, which JMESPath itself only notices when the expression runs; so a pipeline with
  ``lenght(fields.items)`` is refused when it is saved, not when a deal first hits it.
* An ordering comparison between a number and a string (``fields.amount > `10``` where ``amount`` is
  ``"12"``) yields ``null`` as the JMESPath specification says, instead of Python's ``TypeError``.
"""

from __future__ import annotations

import functools
from numbers import Number
from typing import Any

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath.functions import Functions
from jmespath.parser import ParsedResult
from jmespath.visitor import Options, TreeInterpreter

__all__ = ["ExpressionError", "compile_expression", "evaluate", "holds", "is_truthy"]

MAX_LENGTH = 2000
"""The longest expression accepted (the same bound as ``ValidationRule.expr``)."""


class ExpressionError(ValueError):
    """An expression that cannot be compiled, or that failed while it was evaluated."""


def _is_number(value: object) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


class _Interpreter(TreeInterpreter):
    """JMESPath's interpreter, with spec-conforming ordering comparisons of mixed types."""

    def visit_comparator(self, node: dict[str, Any], value: Any) -> Any:
        if node["value"] in self._EQUALITY_OPS:
            return super().visit_comparator(node, value)
        left = self.visit(node["children"][0], value)
        right = self.visit(node["children"][1], value)
        both_numbers = _is_number(left) and _is_number(right)
        both_strings = isinstance(left, str) and isinstance(right, str)
        if not (both_numbers or both_strings):
            return None
        return self.COMPARATOR_FUNC[node["value"]](left, right)


_OPTIONS = Options()
_FUNCTIONS: dict[str, dict[str, Any]] = Functions().FUNCTION_TABLE


def _check_functions(parsed: dict[str, Any]) -> None:
    """Refuse unknown functions and wrong argument counts before anything runs."""
    stack = [parsed]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if node.get("type") == "function_expression":
            name = node.get("value")
            args = node.get("children", [])
            spec = _FUNCTIONS.get(name)
            if spec is None:
                known = ", ".join(sorted(_FUNCTIONS))
                raise ExpressionError(f"unknown function {name}() (known functions: {known})")
            signature = spec["signature"]
            variadic = bool(signature) and signature[-1].get("variadic", False)
            if variadic and len(args) < len(signature):
                raise ExpressionError(
                    f"{name}() takes at least {len(signature)} argument(s), got {len(args)}"
                )
            if not variadic and len(args) != len(signature):
                raise ExpressionError(
                    f"{name}() takes {len(signature)} argument(s), got {len(args)}"
                )
        stack.extend(node.get("children", []))


def _describe(error: jmespath_errors.JMESPathError) -> str:
    if isinstance(error, jmespath_errors.EmptyExpressionError):
        return "the expression is empty"
    message = getattr(error, "msg", None) or str(error).splitlines()[0]
    position = getattr(error, "lex_position", None)
    if isinstance(position, int):
        return f"{message} at position {position}"
    return str(message)


@functools.lru_cache(maxsize=2048)
def compile_expression(expr: str) -> ParsedResult:
    """Parse ``expr`` once (cached), or raise :class:`ExpressionError` saying what is wrong."""
    if not isinstance(expr, str):
        raise ExpressionError("an expression must be a string")
    if not expr.strip():
        raise ExpressionError("the expression is empty")
    if len(expr) > MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        parsed = jmespath.compile(expr)
    except jmespath_errors.JMESPathError as exc:
        raise ExpressionError(f"invalid expression {expr!r}: {_describe(exc)}") from None
    except RecursionError:
        raise ExpressionError(f"invalid expression {expr!r}: nested too deeply") from None
    try:
        _check_functions(parsed.parsed)
    except ExpressionError as exc:
        raise ExpressionError(f"invalid expression {expr!r}: {exc}") from None
    return parsed


def evaluate(expr: str, document: dict[str, Any]) -> Any:
    """The value of ``expr`` over ``document``; :class:`ExpressionError` if that fails."""
    parsed = compile_expression(expr)
    try:
        return _Interpreter(_OPTIONS).visit(parsed.parsed, document)
    except jmespath_errors.JMESPathError as exc:
        raise ExpressionError(f"expression {expr!r} failed: {exc}") from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise ExpressionError(f"expression {expr!r} failed: {exc}") from None


def is_truthy(value: Any) -> bool:
    """JMESPath truthiness: ``null``, ``false``, ``""``, ``[]``, ``{}`` are false; ``0`` is true."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict | tuple) and len(value) == 0:
        return False
    return True


def holds(expr: str, document: dict[str, Any]) -> bool:
    """Whether ``expr`` is truthy over ``document`` (raises :class:`ExpressionError` on failure)."""
    return is_truthy(evaluate(expr, document))
