"""Unit tests for the response cache (ragrail.gateway.cache)."""

from __future__ import annotations

import pytest

from ragrail.gateway.cache import TtlCache, normalise
from tests.unit.fakes import FakeClock


def cache(ttl_s: float = 10.0, max_entries: int = 3) -> tuple[TtlCache[str], FakeClock]:
    clock = FakeClock()
    return TtlCache(ttl_s, max_entries, clock=clock), clock


def test_a_stored_value_is_returned_until_it_expires() -> None:
    c, clock = cache(ttl_s=10)
    c.put("q", "answer")
    assert c.get("q") == "answer"
    clock.advance(9.99)
    assert c.get("q") == "answer"
    clock.advance(0.01)
    assert c.get("q") is None
    assert c.get("q") is None


def test_a_missing_key_is_none() -> None:
    c, _ = cache()
    assert c.get("never stored") is None


def test_putting_again_replaces_the_value_and_restarts_the_ttl() -> None:
    c, clock = cache(ttl_s=10)
    c.put("q", "old")
    clock.advance(8)
    c.put("q", "new")
    clock.advance(8)
    assert c.get("q") == "new"


def test_the_least_recently_used_entry_is_evicted() -> None:
    c, _ = cache(max_entries=3)
    for key in ("a", "b", "c"):
        c.put(key, key.upper())
    assert c.get("a") == "A"  # a is now the most recently used
    c.put("d", "D")
    assert c.get("b") is None, "b was the least recently used"
    assert [c.get(k) for k in ("a", "c", "d")] == ["A", "C", "D"]


def test_putting_an_existing_key_refreshes_its_recency() -> None:
    c, _ = cache(max_entries=2)
    c.put("a", "A")
    c.put("b", "B")
    c.put("a", "A2")
    c.put("c", "C")
    assert c.get("b") is None and c.get("a") == "A2" and c.get("c") == "C"


def test_the_cache_never_exceeds_max_entries() -> None:
    c, _ = cache(max_entries=5)
    for i in range(100):
        c.put(str(i), str(i))
    assert sum(c.get(str(i)) is not None for i in range(100)) == 5
    assert [c.get(str(i)) for i in range(95, 100)] == [str(i) for i in range(95, 100)]


@pytest.mark.parametrize("ttl_s", [0.0, -1.0])
def test_a_ttl_of_zero_disables_the_cache(ttl_s: float) -> None:
    c, _ = cache(ttl_s=ttl_s)
    c.put("q", "answer")
    assert c.get("q") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("How many days?", "how many days?"),
        ("  How   MANY\tdays?\n", "how many days?"),
        ("HOW MANY DAYS?", "how many days?"),
        ("a\u00a0b", "a b"),  # non-breaking space is whitespace too
        ("", ""),
    ],
)
def test_normalise_ignores_case_and_whitespace(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_normalise_keeps_what_changes_the_meaning() -> None:
    assert normalise("refund?") != normalise("refund!")
    assert normalise("re fund") != normalise("refund")
