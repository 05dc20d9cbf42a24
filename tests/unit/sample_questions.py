"""Questions about the bundled Northwind Rail sample corpus, for retrieval tests.

Each answerable question names the one corpus document that answers it and a
short substring that a correct answer or the retrieved chunk should contain.
The off-topic questions share no subject with the corpus, so a grounded
pipeline should find nothing relevant for them.
"""

from __future__ import annotations

ANSWERABLE: list[tuple[str, str, str]] = [
    (
        "How many days before departure can I get a full refund?",
        "tickets-and-fares.md",
        "7 days",
    ),
    (
        "How much does a reservation for a full-size bicycle cost?",
        "luggage-policy.md",
        "€4",
    ),
    (
        "How long is the Coastal Line in kilometres?",
        "network-and-stations.md",
        "84 km",
    ),
    (
        "How far in advance should I book wheelchair assistance?",
        "accessibility.md",
        "24 hours",
    ),
    (
        "Who founded Northwind Rail?",
        "company-history.md",
        "Margit Halvorsen",
    ),
]

OFF_TOPIC: list[str] = [
    "What is the boiling point of tungsten?",
    "Who wrote the opera Carmen?",
    "How many moons does Jupiter have?",
    "What is the best way to proof sourdough bread overnight?",
    "Which chess opening begins with the move 1. c4?",
]
