"""``json_fingerprint`` over arbitrary JSON text, property-based.

Values are drawn as a model (:class:`Number`, :class:`Object`, tuples for
arrays, ``str``, ``bool`` and ``None``) whose equality is the equality of
JSON values the fingerprint promises, then written out as JSON text in
random ways: whitespace, member order, string escapes, number notations.
Two texts must have the same fingerprint exactly when their models are equal.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from operator import itemgetter
from typing import Any, TypeAlias

import pytest
from django.http import HttpRequest
from django.test import RequestFactory
from hypothesis import example, given, settings
from hypothesis import strategies as st

from django_idempotency.fingerprint import MAX_JSON_DEPTH, json_fingerprint

factory = RequestFactory()


def fingerprint(body: bytes | str) -> str:
    request: HttpRequest = factory.post("/payments/", body, content_type="application/json")
    return json_fingerprint(request)


# -- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    """``digits * 10**exponent``, negated if ``negative``. ``digits`` has
    neither leading nor trailing zeros; zero is ``digits=""``, exponent 0,
    and keeps its sign."""

    negative: bool
    digits: str
    exponent: int


@dataclass(frozen=True)
class Object:
    """Members sorted by name, those with one name in the order sent."""

    members: tuple[tuple[str, Value], ...]


Value: TypeAlias = "bool | str | Number | tuple[Value, ...] | Object | None"


def number(negative: bool, digits: str, exponent: int) -> Number:
    return Number(negative, digits, exponent if digits else 0)


def num(literal: str) -> Number:
    """The number ``literal`` writes, read by :class:`decimal.Decimal`."""
    sign, digit_tuple, exponent = Decimal(literal).as_tuple()
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    significant = digits.rstrip("0")
    return number(bool(sign), significant, int(exponent) + len(digits) - len(significant))


def obj(members: list[tuple[str, Value]]) -> Object:
    return Object(tuple(sorted(members, key=itemgetter(0))))


def code_points(text: str) -> str:
    """``text`` as JSON strings mean it: a high surrogate followed by a low
    one is the one character they encode (\\ud83d\\ude00 is 😀)."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


SIGNIFICANT = st.sampled_from(
    ["1", "3", "5", "25", "9007199254740993", "9007199254740992", "30000000000000000001"]
) | st.from_regex(r"[1-9]([0-9]{0,40}[1-9])?", fullmatch=True)

EXPONENTS = st.sampled_from([0, 1, -1, 2, 308, 309, 400, -324, -400]) | st.integers(
    -(10**40), 10**40
)

NUMBERS = st.builds(number, st.booleans(), st.just("") | SIGNIFICANT, EXPONENTS)

#: Lone surrogates, what must be escaped, and what a lossy encoding turns them into.
CHARACTERS = st.characters() | st.sampled_from(
    [*"\ud800\udbff\udc00\udfff\ud83d\ude00\U0001f600", *'"\\/\x00\x1f\x7f\u2028\ufeff\ufffd?é中']
)

STRINGS = st.lists(CHARACTERS, max_size=6).map("".join).map(code_points)

NAMES = st.sampled_from(["a", "b", "amount", ""]) | STRINGS

SCALARS = st.none() | st.booleans() | NUMBERS | STRINGS

VALUES: st.SearchStrategy[Value] = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4).map(tuple)
        | st.lists(st.tuples(NAMES, children), max_size=5).map(obj)
    ),
    max_leaves=25,
)


def depth(value: Value) -> int:
    if isinstance(value, tuple):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, Object):
        return 1 + max((depth(member) for _, member in value.members), default=0)
    return 0


@st.composite
def deep_values(draw: Any) -> Value:
    """A value in arrays and objects by turns, up to :data:`MAX_JSON_DEPTH` deep."""
    value = draw(VALUES)
    for level in range(draw(st.integers(0, MAX_JSON_DEPTH - depth(value)))):
        value = (value,) if level % 2 else obj([("x", value)])
    return value


# -- JSON text, written in random ways -----------------------------------------------------------

SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f"}
SHORT_ESCAPES |= {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class Writer:
    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd

    def space(self) -> str:
        return self.rnd.choice(["", "", " ", "\n", "\t ", "\r\n  "])

    def value(self, value: Value) -> str:
        return self.space() + self.bare(value) + self.space()

    def bare(self, value: Value) -> str:
        if value is None or isinstance(value, bool):
            return {None: "null", True: "true", False: "false"}[value]
        if isinstance(value, Number):
            return self.number(value)
        if isinstance(value, str):
            return self.string(value)
        if isinstance(value, tuple):
            return "[" + (",".join(map(self.value, value)) or self.space()) + "]"
        return "{" + (",".join(self.members(value)) or self.space()) + "}"

    def members(self, value: Object) -> list[str]:
        # Another order, but members with one name keep theirs.
        rank = {name: self.rnd.random() for name, _ in value.members}
        ordered = sorted(value.members, key=lambda member: rank[member[0]])
        return [self.value(name) + ":" + self.value(member) for name, member in ordered]

    def string(self, text: str) -> str:
        return '"' + "".join(map(self.character, text)) + '"'

    def character(self, character: str) -> str:
        code = ord(character)
        must_escape = character in '"\\' or code < 0x20 or 0xD800 <= code <= 0xDFFF
        if not must_escape and self.rnd.random() < 0.7:
            return character
        if character in SHORT_ESCAPES and self.rnd.random() < 0.5:
            return SHORT_ESCAPES[character]
        if code > 0xFFFF:
            high, low = divmod(code - 0x10000, 0x400)
            return self.unicode_escape(0xD800 + high) + self.unicode_escape(0xDC00 + low)
        return self.unicode_escape(code)

    def unicode_escape(self, code: int) -> str:
        hex_digits = f"{code:04x}"
        return "\\u" + "".join(self.rnd.choice([c, c.upper()]) for c in hex_digits)

    def number(self, value: Number) -> str:
        sign = "-" if value.negative else ""
        if not value.digits:
            return sign + self.rnd.choice(["0", "0.0", "0.000", "0e5", "0E-3", "0.0e+12"])
        zeros = self.rnd.randint(0, 3)
        mantissa = value.digits + "0" * zeros
        power = value.exponent - zeros  # the value is mantissa * 10**power
        point = self.rnd.randint(0, len(mantissa))
        if point == 0:  # 0.00mantissa
            leading = self.rnd.randint(0, 3)
            literal = "0." + "0" * leading + mantissa
            power += leading + len(mantissa)
        elif point == len(mantissa):  # mantissa, no point
            literal = mantissa
        else:  # mant.issa
            literal = mantissa[:point] + "." + mantissa[point:]
            power += len(mantissa) - point
        return sign + literal + self.exponent(power)

    def exponent(self, power: int) -> str:
        if power == 0 and self.rnd.random() < 0.5:
            return ""
        sign = "-" if power < 0 else self.rnd.choice(["", "+"])
        leading = "0" * self.rnd.randint(0, 2)
        return self.rnd.choice("eE") + sign + leading + str(abs(power))


def write(value: Value, rnd: random.Random) -> bytes:
    return Writer(rnd).value(value).encode()


RANDOMS = st.randoms(use_true_random=False)

#: Timing is not what these tests are about; a loaded machine must not fail them.
no_deadline = settings(deadline=None)

# Hundreds of examples each: on a loaded machine (the suite runs in several
# processes) they need more than the suite's default hang backstop.
pytestmark = pytest.mark.timeout(600)


# -- the properties ------------------------------------------------------------------------------


@no_deadline
@given(deep_values(), RANDOMS, RANDOMS)
def test_the_same_value_written_two_ways_is_the_same_request(
    value: Value, first: random.Random, second: random.Random
) -> None:
    assert fingerprint(write(value, first)) == fingerprint(write(value, second))


SEED = random.Random(0)
AMOUNTS = [("amount", num("5")), ("amount", num("500"))]


@no_deadline
@given(VALUES, VALUES, RANDOMS)
@example(num("0.3"), num("0.30000000000000000001"), SEED)
@example(num("9007199254740993"), num("9007199254740992"), SEED)
@example(num("1e400"), num("2e400"), SEED)
@example(num("-0"), num("0"), SEED)
@example(obj(AMOUNTS), obj(AMOUNTS[1:]), SEED)
@example(obj(AMOUNTS), obj(AMOUNTS[::-1]), SEED)
@example("\ud800", "\ud801", SEED)
@example("\ud800", "\ufffd", SEED)
@example("\U0001f600", "\ud83d \ude00", SEED)
def test_two_values_are_the_same_request_only_if_equal(
    first: Value, second: Value, rnd: random.Random
) -> None:
    same = fingerprint(write(first, rnd)) == fingerprint(write(second, rnd))

    assert same == (first == second)


@no_deadline
@given(st.builds(number, st.booleans(), SIGNIFICANT, EXPONENTS), st.integers(1, 30), RANDOMS)
def test_a_number_changed_beyond_float_precision_is_another_request(
    value: Number, places: int, rnd: random.Random
) -> None:
    changed = number(value.negative, value.digits + "0" * places + "1", value.exponent - places - 1)

    assert fingerprint(write(value, rnd)) != fingerprint(write(changed, rnd))


JSONISH = st.text(alphabet='[]{}":,0123456789.eE+-\\u tfnrlaseNIiy \t\nd8\ud800é', max_size=60)


@no_deadline
@given(JSONISH | st.binary(max_size=60).map(lambda raw: raw.decode("latin-1")))
def test_any_body_has_a_fingerprint(text: str) -> None:
    body = text.encode("utf-8", "surrogatepass")

    value = fingerprint(body)

    assert len(value) == 64
    assert value == fingerprint(body)


@no_deadline
@given(VALUES, RANDOMS, st.binary(min_size=1, max_size=3), st.floats(0, 1))
def test_json_with_bytes_inserted_has_a_fingerprint(
    value: Value, rnd: random.Random, inserted: bytes, where: float
) -> None:
    text = write(value, rnd)
    at = int(len(text) * where)

    assert len(fingerprint(text[:at] + inserted + text[at:])) == 64
