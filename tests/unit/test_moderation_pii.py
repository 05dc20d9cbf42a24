"""The regex PII backend: what it finds, what it must not, and how it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

import ragrail
from ragrail.common.errors import InvalidArgument
from ragrail.moderation.core import (
    PII_TYPES,
    Category,
    Moderator,
    RegexPiiScorer,
    find_pii,
    iban_valid,
    luhn_valid,
    pii_key,
)

POSITIVES = [
    # emails
    ("write to jane.doe+rail@example.co.uk today", "email"),
    ("JOHN_SMITH@Example.COM", "email"),
    # phones: international
    ("call +44 20 7946 0958", "phone"),
    ("call +1 (555) 123-4567", "phone"),
    ("appelez le +33 1 23 45 67 89", "phone"),
    ("WhatsApp +4915112345678", "phone"),
    # phones: North American national formats
    ("call (555) 123-4567", "phone"),
    ("call 555-123-4567", "phone"),
    ("call 555.123.4567.", "phone"),
    ("call 1-800-555-0199", "phone"),
    # phones: national numbers with a trunk 0
    ("ring 020 7946 0958", "phone"),
    ("ring 07700 900123 after six", "phone"),
    ("ring 07700900123", "phone"),
    ("appelez le 01 23 45 67 89", "phone"),
    ("appelez le 01.23.45.67.89", "phone"),
    ("Tel. 030-12345678", "phone"),
    ("from abroad 0044 20 7946 0958", "phone"),
    # payment cards (Luhn-valid test numbers)
    ("card 4111 1111 1111 1111", "card"),
    ("card 4111-1111-1111-1111 exp 12/27", "card"),
    ("card 4111111111111111", "card"),
    ("mastercard 5500 0000 0000 0004", "card"),
    ("amex 3782 822463 10005", "card"),
    ("discover 6011111111111117", "card"),
    ("visa 13 digits 4222222222222", "card"),
    # national ids
    ("SSN 123-45-6789", "ssn"),
    ("ssn 123 45 6789", "ssn"),
    ("NI number AB 12 34 56 C", "uk_nino"),
    ("NINO: ab123456c", "uk_nino"),
    ("IBAN DE89 3704 0044 0532 0130 00", "iban"),
    ("IBAN DE89370400440532013000", "iban"),
    ("pay to GB82 WEST 1234 5698 7654 32", "iban"),
    ("FR14 2004 1010 0505 0001 3M02 606", "iban"),
]


@pytest.mark.parametrize(("text", "kind"), POSITIVES)
def test_each_type_is_found(text: str, kind: str) -> None:
    assert find_pii(text) == (kind,)


NEGATIVES = [
    # Decided: a 7-digit local number without an area code is NOT a phone. It cannot
    # be told apart from a reference, an extension or a range ("tickets 555-1234").
    "Call me at 555-1234?",
    "phone: 555 1234",
    # Luhn-failing card-shaped numbers (the last digit of a valid one, changed)
    "card 4111 1111 1111 1112",
    "order 4111111111111112",
    "4000 0566 5566 5557",
    # numbers starting 7-9 or 0-1 are no card network's
    "tracking 9400111899223856921234",
    "timestamp 1700000000000",
    # dates, times, years, ranges
    "on 2024-01-15 at 10:30",
    "on 01.02.2024 10:30",
    "15/01/2024",
    "from 1999-2024",
    "year 2023-24",
    "the 10:15 train from platform 9",
    "between 9:00 and 17:00",
    # prices and quantities
    "costs $1,299.99",
    "an Annual Pass for €1,190",
    "€1 234 567 of investment",
    "1 500 000 passengers in 2023",
    "fares rose 3.5% in 2024 to £12.50",
    "up +12.5% year on year",
    "30 000 km of track",
    # ISBNs: ISBN-13 starts 978/979 (no card network), ISBN-10 is skipped after "ISBN"
    "ISBN 978-3-16-148410-0",
    "ISBN 9780306406157",
    "ISBN 0-306-40615-2",
    "ISBN-10: 0306406152",
    # identifiers and versions
    "IP 192.168.100.1",
    "version 1.2.3",
    "Ticket no. 1234 5678 9012",
    "dial 112 or 999",
    "route 66",
    # invalid national ids
    "SSN 000-12-3456",
    "SSN 666-12-3456",
    "SSN 912-12-3456",
    "SSN 123-00-6789",
    "SSN 123-45-0000",
    "NINO QQ123456C",  # the specimen prefix: never issued
    "NINO GB123456A",
    "NINO AB123456E",  # suffix is A-D
    "IBAN DE89 3704 0044 0532 0130 01",  # mod-97 fails
    "IBAN DE00 0000 0000 0000 0000 00",
    "IBAN XX89 3704 0044 0532 0130 00",  # no such country
    # not emails
    "@northwind on social media",
    "user@localhost",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_tricky_negatives_are_not_pii(text: str) -> None:
    assert find_pii(text) == ()


def test_several_types_are_reported_once_each_in_a_fixed_order() -> None:
    text = (
        "Phone +44 20 7946 0958 or 020 7946 0958; mail a@b.io and c@d.io; "
        "card 4111 1111 1111 1111; IBAN DE89 3704 0044 0532 0130 00; SSN 123-45-6789; NI AB123456C"
    )
    assert find_pii(text) == PII_TYPES


def test_a_card_is_not_also_a_phone_and_an_iban_not_also_a_card() -> None:
    assert find_pii("4111 1111 1111 1111") == ("card",)
    assert find_pii("DE89 3704 0044 0532 0130 00") == ("iban",)
    assert find_pii("jane.5551234567@example.com") == ("email",)


def test_the_types_can_be_narrowed() -> None:
    text = "mail a@b.io, card 4111 1111 1111 1111"
    assert find_pii(text, ["card"]) == ("card",)
    assert find_pii(text, ["phone"]) == ()


def test_allowed_values_are_not_reported_whatever_their_format() -> None:
    allow = ["0800 555 0140", "Help@Northwind.example"]
    assert find_pii("by phone on 0800-555-0140", allow=allow) == ()
    assert find_pii("write to help@northwind.example", allow=allow) == ()
    assert find_pii("or 0800 555 0141", allow=allow) == ("phone",)
    assert pii_key("0800 555 0140") == pii_key("0800-555-0140") == "08005550140"


def test_the_sample_corpus_has_only_its_published_helpline() -> None:
    """The packaged config allows the assistance line, so answers may quote it."""
    from ragrail.common.config import load_settings

    corpus = Path(ragrail.__file__).parent / "data" / "sample_corpus"
    texts = {p.name: p.read_text() for p in sorted(corpus.glob("*.md"))}
    assert {name for name, text in texts.items() if find_pii(text)} == {"accessibility.md"}
    allow = load_settings().moderation.categories.pii.pii_allow or []
    assert all(find_pii(text, allow=allow) == () for text in texts.values())


@pytest.mark.parametrize(
    ("number", "valid"),
    [("4111111111111111", True), ("4111111111111112", False), ("79927398713", True), ("79927398710", False), ("0", True)],
)
def test_luhn(number: str, valid: bool) -> None:
    assert luhn_valid(number) is valid


@pytest.mark.parametrize(
    ("iban", "valid"),
    [
        ("DE89370400440532013000", True),
        ("de89 3704 0044 0532 0130 00", True),
        ("DE8937040044053201300", False),  # one digit short for Germany
        ("DE88370400440532013000", False),
        ("NO9386011117947", True),
    ],
)
def test_iban_check(iban: str, valid: bool) -> None:
    assert iban_valid(iban) is valid


def test_scorer_scores_one_or_zero_with_the_types_found() -> None:
    scorer = RegexPiiScorer()
    assert scorer.score_with_labels(["no personal data", "mail a@b.io or 555-123-4567"]) == [
        (0.0, ()),
        (1.0, ("email", "phone")),
    ]
    assert scorer.score(["x", "SSN 123-45-6789"]) == [0.0, 1.0]


def test_scorer_rejects_unknown_types() -> None:
    with pytest.raises(InvalidArgument, match="unknown PII types"):
        RegexPiiScorer(["email", "passport"])


def test_moderator_reports_pii_types_only_for_the_pii_category() -> None:
    m = Moderator({Category.PII: RegexPiiScorer()}, {Category.PII: 0.5})
    clean, leaked = m.moderate(["the train leaves at 10:15", "card 4111 1111 1111 1111, a@b.io"])
    assert not clean.flagged and clean.pii_types == ()
    assert leaked.flagged_categories == [Category.PII]
    assert leaked.pii_types == ("email", "card")
    (score,) = leaked.scores
    assert (score.score, score.threshold, score.labels) == (1.0, 0.5, ("email", "card"))


def test_a_long_text_is_scanned_fast() -> None:
    import time

    text = ("0123456789 " * 1000 + "x@y.io ")[:16_000]
    start = time.perf_counter()
    assert find_pii(text) == ("email",)  # a digit run followed by more digits never ends a phone
    assert time.perf_counter() - start < 1.0
