"""desired/drift.py's pure quantity parser against the kubernetes client's parse_quantity.

build/ may not import the client (pyproject's import-linter contract), so it keeps its own
parser; here the client's is the reference for every quantity the API server accepts.
"""

from __future__ import annotations

import re
from decimal import Context

from hypothesis import given
from hypothesis import strategies as st
from kubernetes.utils import parse_quantity as client_parse_quantity

from tokenscale.api.models import QUANTITY_PATTERN
from tokenscale.desired.drift import parse_quantity

# "No quantity may represent a number greater than 2^63-1 in magnitude" (the Quantity API docs).
LARGEST = 2**63 - 1


def representable(text: str) -> bool:
    return client_parse_quantity(text) <= LARGEST


SUFFIXES = ("", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u")
quantities = st.builds(
    lambda whole, fraction, suffix: f"{whole}{'.' + fraction if fraction else ''}{suffix}",
    st.integers(min_value=0, max_value=10**6),
    st.one_of(st.none(), st.from_regex(r"[0-9]{1,4}", fullmatch=True)),
    st.sampled_from(SUFFIXES),
).filter(representable)


def agree(text: str) -> bool:
    """Equal at the client's precision: it rounds to Python's default 28 digits, ours is exact."""
    client = Context(prec=28)
    return client.create_decimal(parse_quantity(text)) == client.create_decimal(client_parse_quantity(text))


@given(quantities)
def test_agrees_with_the_client(text):
    assert agree(text)


@given(st.from_regex(QUANTITY_PATTERN, fullmatch=True).filter(representable))
def test_every_quantity_the_crd_admits_parses(text):
    assert agree(text)


def test_long_quantities_are_exact():
    # 31 significant digits: a 28-digit context would round the last one away.
    assert str(parse_quantity("100000000000000.00000000000001m")) == "100000000000.00000000000000001"


def test_exa_and_exbi_are_suffixes_not_exponents():
    # "E" is also the exponent marker ("1E3"); these two once raised ValueError in drift detection.
    assert parse_quantity("1E") == 10**18
    assert parse_quantity("2Ei") == 2 * 2**60
    assert parse_quantity("1E3") == 1000 and parse_quantity("5e-3") == parse_quantity("5m")


def test_not_quantities():
    for text in ("", "Mi", "1ki", "1KI", "1..2", "e3", "1ee3", "1e", "12Z", "banana"):
        assert parse_quantity(text) is None, text
    assert parse_quantity(True) is None and parse_quantity(None) is None
    assert not re.match(QUANTITY_PATTERN, "1K")  # the API server has no "K"; the client accepts it
