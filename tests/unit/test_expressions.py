import pytest

from domain.expressions import ExpressionError, compile_expression, evaluate, holds, is_truthy

DOC = {
    "deal_id": "d1",
    "value": 1200.0,
    "currency": "EUR",
    "owner": "alice",
    "stage": "qualified",
    "fields": {"region": "EU", "amount": "12", "items": [1, 2, 3], "contact": {"email": "a@x"}},
}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("value", 1200.0),
        ("fields.region", "EU"),
        ("fields.contact.email", "a@x"),
        ("fields.nothing", None),
        ("value > `1000`", True),
        ("value > `5000`", False),
        ("fields.region == 'EU' && value >= `1200`", True),
        ("length(fields.items)", 3),
        ("contains(['EU', 'US'], fields.region)", True),
        ("owner || 'nobody'", "alice"),
        ("fields.missing || 'fallback'", "fallback"),
        ("!(fields.missing)", True),
        ("starts_with(fields.contact.email, 'a@')", True),
    ],
)
def test_evaluate(expr, expected):
    assert evaluate(expr, DOC) == expected


def test_ordering_a_string_against_a_number_is_null_not_a_crash():
    # plain jmespath raises TypeError here; the JMESPath spec says the result is null
    assert evaluate("fields.amount > `10`", DOC) is None
    assert holds("fields.amount > `10`", DOC) is False
    assert evaluate("fields.region < 'FR'", DOC) is True  # strings compare with strings
    assert evaluate("`true` > `1`", DOC) is None  # booleans are not numbers


@pytest.mark.parametrize(
    ("value", "truthy"),
    [
        (None, False),
        (False, False),
        ("", False),
        ([], False),
        ({}, False),
        (True, True),
        (0, True),  # JMESPath: 0 is true
        (0.0, True),
        ("0", True),
        ("false", True),
        ([None], True),
        ({"a": None}, True),
    ],
)
def test_is_truthy_follows_jmespath(value, truthy):
    assert is_truthy(value) is truthy


def test_holds():
    assert holds("fields.region == 'EU'", DOC) is True
    assert holds("fields.region == 'US'", DOC) is False
    assert holds("fields.items", DOC) is True
    assert holds("fields.items[?@ > `5`]", DOC) is False  # empty list is false


@pytest.mark.parametrize(
    "expr",
    ["value >", "fields.[", "foo(", "`{bad", "'unterminated", "a ||| b", "", "   "],
)
def test_compile_refuses_syntax_errors(expr):
    with pytest.raises(ExpressionError):
        compile_expression(expr)


def test_syntax_error_message_names_the_expression_and_position():
    with pytest.raises(ExpressionError) as caught:
        compile_expression("a ||| b")
    message = str(caught.value)
    assert "'a ||| b'" in message
    assert "position 4" in message


def test_expression_error_is_a_value_error():
    assert issubclass(ExpressionError, ValueError)
    with pytest.raises(ValueError):
        compile_expression("value >")


def test_unknown_functions_are_refused_at_compile_time():
    with pytest.raises(ExpressionError, match=r"unknown function lenght\(\)"):
        compile_expression("lenght(fields.items) > `0`")


def test_wrong_arity_is_refused_at_compile_time():
    with pytest.raises(ExpressionError, match=r"length\(\) takes 1 argument"):
        compile_expression("length(a, b)")
    with pytest.raises(ExpressionError, match=r"at least 1"):
        compile_expression("not_null()")
    compile_expression("not_null(a, b, 'x')")  # variadic: any count from one up
    compile_expression("merge(a, b, c)")


def test_nested_function_calls_are_checked_too():
    with pytest.raises(ExpressionError, match="nope"):
        compile_expression("length(fields.items[?nope(@)])")


def test_overlong_expressions_are_refused():
    with pytest.raises(ExpressionError, match="longer than"):
        compile_expression("a" * 2001)


def test_non_string_is_refused():
    with pytest.raises(ExpressionError):
        compile_expression(42)  # type: ignore[arg-type]


def test_compiled_expressions_are_cached():
    compile_expression.cache_clear()
    first = compile_expression("fields.cached_one")
    second = compile_expression("fields.cached_one")
    assert first is second
    assert compile_expression.cache_info().hits >= 1


def test_runtime_type_errors_become_expression_errors():
    with pytest.raises(ExpressionError, match="failed"):
        evaluate("length(value)", DOC)  # length of a number
    with pytest.raises(ExpressionError):
        holds("abs(fields.region)", DOC)


def test_evaluate_refuses_invalid_syntax():
    with pytest.raises(ExpressionError):
        evaluate("value >", DOC)


def test_evaluation_does_not_mutate_the_document():
    doc = {"fields": {"items": [3, 1, 2]}}
    assert evaluate("sort(fields.items)", doc) == [1, 2, 3]
    assert doc == {"fields": {"items": [3, 1, 2]}}
