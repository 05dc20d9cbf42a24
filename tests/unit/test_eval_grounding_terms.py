"""The groundedness extractor (ragrail.common.grounding_terms): numbers, times and names
of an answer, and whether the passages hold them; prompt-leak detection."""

from __future__ import annotations

from importlib import resources

import pytest

from ragrail.common.grounding_terms import (
    NAME,
    NUMBER,
    TIME,
    canonical_number,
    extract_terms,
    is_grounded,
    prompt_leaks,
    ungrounded_terms,
)
from ragrail.gateway.pipeline import build_prompt
from ragrail.gateway.specs import DEFAULT_RAG_PROMPT


def corpus(name: str) -> str:
    return resources.files("ragrail.data").joinpath("sample_corpus", name).read_text()


def keys(text: str, kind: str) -> list[str]:
    return [t.key for t in extract_terms(text) if t.kind == kind]


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("1,450", "1450"), ("14.50", "14.5"), ("06", "6"), ("1000", "1000"), ("9.20", "9.2"), ("0.5", "0.5"), ("x", "")],
)
def test_canonical_numbers(raw: str, canonical: str) -> None:
    assert canonical_number(raw) == canonical


def test_numbers_in_their_usual_formats() -> None:
    text = "It costs €1,190, or €14.50 for 96.1% of 9.2 million journeys in 2023; 3.5% and the 2nd stop."
    assert keys(text, NUMBER) == ["1190", "14.5", "96.1", "9200000", "2023", "3.5", "2"]


def test_number_words_count_but_one_does_not() -> None:
    assert keys("twelve years, seven days, one of the trains", NUMBER) == ["12", "7"]


def test_times_are_not_also_numbers_and_pm_is_read() -> None:
    text = "Open from 06:30 until 7:00 pm, shuttles at 00:30."
    assert keys(text, TIME) == ["6:30", "19:00", "0:30"]
    assert keys(text, NUMBER) == []


def test_list_markers_are_not_figures() -> None:
    assert keys("Stations:\n1. Ostervik Central\n2) Millbrook", NUMBER) == []


def test_names_are_runs_of_capitalised_words_not_sentence_starters() -> None:
    text = (
        "The company was founded by Margit Halvorsen. She handed over to Tomas Eriksen and Ingrid Solberg. "
        "In June, Kestrel-class trains won Regional Operator of the Year. Yes, it is in EUR."
    )
    assert keys(text, NAME) == [
        "margit halvorsen", "tomas eriksen", "ingrid solberg", "june", "kestrel class", "regional operator of the year",
    ]


def test_a_sentence_initial_word_is_checked_when_the_answer_capitalises_it_elsewhere() -> None:
    assert keys("Halvorsen founded it. Stonereach is highest.", NAME) == ["halvorsen", "stonereach"]
    history = [corpus("company-history.md")]
    assert is_grounded("Call us. Halvorsen founded it.", history)  # "Call": a capital letter only
    invented = "Halvorsson founded it with Margit Halvorsson."
    assert {t.key for t in ungrounded_terms(invented, history)} == {"halvorsson", "margit halvorsson"}


def test_a_grounded_answer_restated_differently_passes() -> None:
    passages = [corpus("company-history.md")]
    answer = (
        "Northwind Rail was founded in 1994 by **Margit Halvorsen**; she spent twelve years on bridges. "
        "Its trains carried 9,200,000 journeys in 2023 and it employs about 1450 people; 22 Kestrel-class units."
    )
    assert ungrounded_terms(answer, passages) == []
    assert is_grounded(answer, passages)


def test_invented_numbers_and_names_are_caught() -> None:
    # The issue's own example: "100% ... for 10 days" where the cited passage says 7 days.
    refunds = corpus("tickets-and-fares.md").split("## Refunds")[1].split("## Delay")[0]
    missing = ungrounded_terms("You get a 100% refund for 10 days before departure.", [refunds])
    assert [t.key for t in missing] == ["100", "10"]
    # Both words exist in the corpus, the name does not.
    history = [corpus("company-history.md")]
    assert [t.text for t in ungrounded_terms("It was founded by Margit Solberg.", history)] == ["Margit Solberg"]
    assert [t.text for t in ungrounded_terms("Northwind Rail owns 39 trains.", history)] == ["39"]


def test_times_ground_a_bare_hour_and_a_wrong_time_is_caught() -> None:
    passages = [corpus("accessibility.md")]  # "every day from 06:00 to 22:00"
    assert is_grounded("Call from 6 am until 22:00.", passages)
    assert [t.key for t in ungrounded_terms("Call from 06:00 until 23:00.", passages)] == ["23:00"]


def test_passages_are_read_permissively_the_answer_strictly() -> None:
    passages = ["In 2023 its trains carried 9.2 million passenger journeys."]
    assert is_grounded("They carried 9.2 million journeys.", passages)
    assert is_grounded("They carried 9.2 (million) journeys.", passages)
    # The answer's scaled figure is what it claims: 9.2 thousand is not in the passage.
    assert not is_grounded("They carried 9.2 thousand journeys.", passages)


def test_no_terms_is_grounded_and_no_passages_is_not() -> None:
    assert is_grounded("I don't know.", [])
    assert not is_grounded("It opened in 1996.", [])


def test_prompt_leaks_wrapper_tags_sentences_and_system_prompt() -> None:
    issue_example = "The question is between <question-70ddd36b> and </question-70ddd36b>. The answer is between <answer-1a2b3c4d>"
    leaks = prompt_leaks(issue_example)
    assert "<question-70ddd36b>" in leaks and "</question-70ddd36b>" in leaks and "<answer-1a2b3c4d>" in leaks
    assert "the question is between" in leaks
    echo = "Sure. You are a helpful assistant. Answer the question using only the context."
    assert prompt_leaks(echo, [DEFAULT_RAG_PROMPT]) == [
        "You are a helpful assistant.", "Answer the question using only the context."
    ]
    assert prompt_leaks("Northwind Rail was founded by Margit Halvorsen in 1994.", [DEFAULT_RAG_PROMPT]) == []


def test_leak_detection_matches_what_build_prompt_really_writes() -> None:
    """If the gateway's wrapper changes shape, this fails instead of leaks going unseen."""
    from ragrail.gateway.backends import Passage

    passages = [Passage(document_id="d", text="Some text.", score=0.9, chunk_index=0)]
    system, user = build_prompt(DEFAULT_RAG_PROMPT, "Who?", passages, b"k" * 32)
    assert len(prompt_leaks(user.content)) >= 4  # two tags open and close
    assert prompt_leaks(system.content, [DEFAULT_RAG_PROMPT])


def test_a_name_in_singular_or_plural_is_the_same_name() -> None:
    history = [corpus("company-history.md")]  # 'nicknamed the "Puffins"'
    assert is_grounded("The Puffin diesel railcars were retired in 2014.", history)
    assert not is_grounded("The Puffling railcars were retired in 2014.", history)


def test_digits_of_a_leaked_tag_are_ungrounded_too() -> None:
    answer = "The question is between <question-403087c3> and </question-403087c3>."
    assert prompt_leaks(answer) and not is_grounded(answer, [corpus("company-history.md")])
