"""The ground stage's logic (ragrail.gateway.grounding): what holds an answer back, and the
extractive answer that replaces it."""

from __future__ import annotations

import pytest

from ragrail.gateway.grounding import (
    asked_form,
    RRF_K,
    Meaning,
    SentenceGate,
    _scored_sentences,
    asked_kinds,
    asked_noun,
    best_sentences,
    candidate_sentences,
    check_answer,
    extractive_answer,
    unbound_figures,
    missing_answer_type,
    question_parts,
    quote,
    scattered_figures,
    sentences,
)

REFUNDS = (
    "Full refunds are available up to 7 days before departure. After that a 10 EUR fee applies. "
    "Refund requests are answered within 10 minutes."
)
HISTORY = "Northwind Rail was founded by Margit Halvorsen on 3 March 1994. The first train left Ostervik at 06:15."
SYSTEM = "You are a helpful assistant. Answer the question using only the context."


def test_a_grounded_answer_passes() -> None:
    assert check_answer("You can get a full refund up to 7 days before departure.", [REFUNDS]) == []
    assert check_answer("Margit Halvorsen founded it in 1994.", [HISTORY]) == []


def test_a_number_the_passages_never_give_is_held_back() -> None:
    problems = check_answer("You get 100% back for 12 days.", [REFUNDS])
    assert any("12" in p for p in problems) and any("100" in p for p in problems)


def test_a_passage_number_with_another_unit_is_held_back() -> None:
    # 10 is in the passage (10 minutes, 10 EUR), but never as days: the "10 days".
    assert unbound_figures("Refunds are possible for 10 days.", [REFUNDS]) == ["10 day"]
    assert check_answer("Refunds are possible for 10 days.", [REFUNDS]) == [
        "number beside a word the passages never put beside it: 10 day"
    ]
    assert unbound_figures("A 7-day window applies.", [REFUNDS]) == []  # same figure, same unit
    assert check_answer("Refunds are possible for 10 days.", [REFUNDS], checks=("numbers",)) == []


ACCESS = (
    "Step-free access\n\nEvery Kestrel-class train has 2 wheelchair spaces per unit, next to an accessible toilet. "
    "Each unit has three carriages and seats 210 passengers."
)


def test_a_passage_figure_counting_something_else_is_held_back() -> None:
    # The kind of miss: a real figure of the passage, but it counts wheelchair spaces.
    assert unbound_figures("The Kestrel-class train has 2 passengers.", [ACCESS]) == ["2 passenger"]
    assert check_answer("The Kestrel-class train has 2 passengers.", [ACCESS]) == [
        "number beside a word the passages never put beside it: 2 passenger"
    ]
    assert unbound_figures("A unit seats 210 passengers.", [ACCESS]) == []
    assert unbound_figures("There are 210 seats.", [ACCESS]) == []  # "seats 210": within reach either side
    assert unbound_figures("It has 2 spaces for wheelchairs.", [ACCESS]) == []


def test_a_figure_binds_only_the_word_straight_after_it_in_any_unit_spelling() -> None:
    line = "The Coastal Line is 84 km long and reopened in 1996."
    assert unbound_figures("It is 84 kilometres long.", [line]) == []
    assert unbound_figures("In 1996, the line reopened.", [line]) == []  # a comma ends the binding
    assert unbound_figures("It is 84 miles long.", [line]) == ["84 mile"]
    assert unbound_figures("It has 3 stations.", [line]) == []  # 3 is not the passage's: the numbers check's
    assert unbound_figures("Punctuality was 96.1 per cent.", ["96.1% arrived on time."]) == []


NETWORK = (
    "Network and stations\n\nNorthwind Rail runs four lines with a combined length of 206 km and 11 stations. "
    "Three lines start at Ostervik Central, the company's hub. Every line is shown in its own colour on maps.\n\n"
    "Coastal Line\n\nThe Coastal Line was the first line, opened in 1996. It is 84 km long."
)


def test_a_figure_far_from_the_name_it_is_claimed_of_is_held_back() -> None:
    # 206 km is the whole network's length; the Coastal Line's is 84 km, a sentence after its name.
    assert scattered_figures("The Coastal Line is 206 km long.", [NETWORK]) == ["206 (about Coastal Line)"]
    assert check_answer("The Coastal Line is 206 km long.", [NETWORK]) == [
        "number not near its names in the passages: 206 (about Coastal Line)"
    ]
    assert scattered_figures("The Coastal Line is 84 km long.", [NETWORK]) == []
    # Within three sentences of each other is near: the subject named two sentences before.
    assert scattered_figures("Northwind Rail runs 4 lines and 11 stations.", [NETWORK]) == []
    assert scattered_figures("The network is 206 km long.", [NETWORK]) == []  # no name: nothing to pair
    assert check_answer("The Coastal Line is 206 km long.", [NETWORK], checks=("numbers", "units")) == []


def test_dates_and_times_are_checked() -> None:
    assert check_answer("It was founded on 3 March 1994.", [HISTORY]) == []
    assert check_answer("It was founded on 3 May 1994.", [HISTORY]) == ["name not in the passages: May"]
    assert check_answer("It was founded in 1995.", [HISTORY]) == ["number not in the passages: 1995"]
    assert check_answer("The first train left at 06:15.", [HISTORY]) == []
    assert check_answer("The first train left at 07:15.", [HISTORY]) == ["time not in the passages: 07:15"]


def test_a_name_the_passages_never_give_is_held_back() -> None:
    assert check_answer("It was founded by Ingrid Solberg.", [HISTORY]) == [
        "name not in the passages: Ingrid Solberg"
    ]


def test_echoing_the_wrapper_tags_or_system_prompt_is_held_back() -> None:
    leak = "The question is between <question-70ddd36b> and </question-70ddd36b>."
    problems = check_answer(leak, [REFUNDS], [SYSTEM])
    assert "echoes the prompt: <question-70ddd36b>" in problems
    assert "echoes the prompt: the question is between" in problems
    problems = check_answer("Answer the question using only the context. It is 7 days.", [REFUNDS], [SYSTEM])
    assert problems == ["echoes the prompt: Answer the question using only the context."]
    assert check_answer(leak, [REFUNDS], [SYSTEM], checks=("names",)) == []  # checks are chosen


def test_a_repeated_sentence_is_held_back() -> None:
    looped = "Refunds are available for 7 days. Refunds are available for 7 days."
    assert check_answer(looped, [REFUNDS]) == ["repeats: Refunds are available for 7 days."]


def test_the_best_matching_sentences_are_quoted_in_passage_order() -> None:
    quotes = best_sentences("How many days before departure can I get a full refund?", [HISTORY, REFUNDS], 0.5, 2)
    assert [q.text for q in quotes] == ["Full refunds are available up to 7 days before departure."]
    # day, departure, full, refund: all covered (1.0), plus a quarter for holding the figure asked for
    assert quotes[0].passage == 1 and quotes[0].score == 1.25
    assert quote(quotes) == "\u201cFull refunds are available up to 7 days before departure.\u201d"
    # The quote passes the check it replaces: quoting adds no number (no "[1]" markers).
    assert check_answer(quote(quotes), [REFUNDS]) == []


def test_nothing_is_quoted_when_no_sentence_matches_well_enough() -> None:
    assert best_sentences("What is the boiling point of tungsten?", [HISTORY, REFUNDS], 0.5, 2) == []
    assert best_sentences("the of and", [REFUNDS], 0.1, 2) == []  # no content words at all


def test_at_most_max_sentences_are_quoted() -> None:
    quotes = best_sentences("refund requests fee", [REFUNDS], 0.3, 1)
    assert [q.text for q in quotes] == ["Refund requests are answered within 10 minutes."]


def test_sentences_split_at_ends_and_line_breaks_not_in_numbers() -> None:
    assert sentences("It costs 9.2 million. Really?\nYes") == ["It costs 9.2 million.", "Really?", "Yes"]


def test_the_gate_releases_complete_sentences_verbatim() -> None:
    gate = SentenceGate()
    assert gate.feed("Refunds are ") == []
    assert gate.feed("possible. Up to") == ["Refunds are possible. "]
    assert gate.feed(" 7.5 days") == []  # "7.5" is no sentence end
    assert gate.feed("!\n") == []  # the whitespace after it may continue
    assert gate.feed("Then") == ["Up to 7.5 days!\n"]
    assert gate.rest() == "Then" and gate.rest() == ""


def test_an_answer_that_says_nothing_is_held_back() -> None:
    # What is left when generation stops at an echoed tag (the cited layout's stop sequences).
    assert check_answer("The answer is:", [REFUNDS]) == ["says nothing"]
    assert check_answer("The answer is: 7.", [REFUNDS]) == []


# --- the checks that read the question (focus, answer_type) and quoting by question part ---

FLEET = (
    "Northwind Rail is a regional railway operator. It employs about 1,450 people. "
    "The fleet has 38 trains. The café on platform 2 is run by Linnea Dahl. "
    "It is open from 06:30 to 19:00 on weekdays."
)


def test_a_grounded_figure_from_a_sentence_about_something_else_is_held_back() -> None:
    question = "How many people does Northwind Rail employ?"
    # 38 is in the passages, so the plain checks pass it; it is not in the sentences about employees.
    assert check_answer("It employs 38 people.", [FLEET], checks=("numbers",), question=question) == []
    checks = ("numbers", "focus")
    assert check_answer("It employs 38 people.", [FLEET], checks=checks, question=question) == [
        "not in the sentences about the question: 38"
    ]
    assert check_answer("It employs about 1,450 people.", [FLEET], question=question) == []
    assert check_answer("It employs 38 people.", [FLEET], checks=checks) == []  # no question: nothing to focus on
    # The units check holds it even without the question: the passages' 38 counts trains.
    assert check_answer("It employs 38 people.", [FLEET]) == [
        "number beside a word the passages never put beside it: 38 people"
    ]


def test_the_subject_most_passages_name_is_no_off_focus_claim() -> None:
    passages = ["Northwind Rail sells tickets online.", "Northwind Rail runs trains. Refunds take 7 days.", FLEET]
    question = "How long do refunds take?"
    assert check_answer("At Northwind Rail, refunds take 7 days.", passages, question=question) == []
    assert check_answer("Refunds take 7 days, says Linnea Dahl.", passages, question=question) == [
        "not in the sentences about the question: Linnea Dahl"
    ]


def test_an_answer_without_the_kind_of_fact_asked_for_is_held_back() -> None:
    when = "When is the café on platform 2 open on weekdays?"
    assert check_answer("The café is open on weekdays.", [FLEET], question=when) == [
        "gives no date or time although the question asks for one"
    ]
    how_many = "How many people does Northwind Rail employ?"
    assert check_answer("It employs many people.", [FLEET], question=how_many) == [
        "gives no figure although the question asks for one"
    ]
    assert check_answer("From 06:30 to 19:00.", [FLEET], question=when) == []
    who = "Who runs the café on platform 2?"
    assert check_answer("The café is run by the station.", [FLEET], question=who) == [
        "gives no name although the question asks for one"
    ]
    assert check_answer("Linnea Dahl runs it.", [FLEET], question=who) == []
    # Not asked for a figure, or none to give: a plain answer passes.
    assert check_answer("Yes, it is a regional operator.", [FLEET], question="Is Northwind Rail regional?") == []
    assert check_answer("It is not open.", ["The kiosk has closed for good."], question="When is the kiosk open?") == []


def test_a_pronoun_sentence_borrows_the_words_of_the_one_before_it() -> None:
    quotes = best_sentences("When is the café on platform 2 open on weekdays?", [FLEET], 0.5, 1)
    assert [q.text for q in quotes] == ["It is open from 06:30 to 19:00 on weekdays."]


def test_a_question_in_parts_quotes_the_best_sentence_of_each_part() -> None:
    question = "How many people does Northwind Rail employ, and who runs the café on platform 2?"
    assert question_parts(question) == [
        "How many people does Northwind Rail employ", "who runs the café on platform 2?"
    ]
    quotes = best_sentences(question, [FLEET], 0.5, 2)
    assert [q.text for q in quotes] == [
        "It employs about 1,450 people.", "The café on platform 2 is run by Linnea Dahl."
    ]


def test_headings_are_never_quoted() -> None:
    passage = "Platform café\n\nThe platform café sells buns."
    assert [q.text for q in best_sentences("Does the platform café sell buns?", [passage], 0.3, 3)] == [
        "The platform café sells buns."
    ]
    path = "Station Services at Fernholt > Platform café and opening times\n\nThe platform café sells buns."
    assert [q.text for q in best_sentences("Does the platform café at Fernholt sell buns?", [path], 0.3, 3)] == [
        "The platform café sells buns."
    ], "a chunk's heading path line is a heading, however many words it has"


def test_quotes_that_lack_the_kind_of_fact_asked_for_are_not_an_answer() -> None:
    ferry = "Kelby Harbour is where the line meets the ferry; the pier is a four-minute walk from platform 1."
    question = "At what times does the ferry leave Kelby Harbour?"
    assert best_sentences(question, [ferry], 0.5, 2)  # the sentence matches the words...
    assert extractive_answer(question, [ferry], 0.5, 2) == []  # ...but gives no time: canned instead
    assert [q.text for q in extractive_answer("When is the café on platform 2 open on weekdays?", [FLEET], 0.5, 1)] == [
        "It is open from 06:30 to 19:00 on weekdays."
    ]


# --- ranking by meaning --------------------------------------------------------------------

FOUNDING = "Northwind Rail was founded by Margit Halvorsen on 3 March 1994."
TRAINS_OWNED = "Today the company owns 38 trains."
PARAPHRASE = "Whose idea was it to set up the firm?"


def _meaning(scores: dict[str, float], question: str = PARAPHRASE, floor: float = 0.35) -> Meaning:
    return Meaning({(question, s): v for s, v in scores.items()}, floor)


def test_meaning_from_vectors_ranks_by_the_asked_form_and_takes_only_what_is_close_in_both() -> None:
    # Vectors of: the part whole, the part without its names, then sentences a, b, c.
    vectors = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]
    meaning = Meaning.from_vectors(["q"], ["a", "b", "c"], vectors, 0.35)
    assert (meaning.of("q", "a"), meaning.of("q", "b"), meaning.of("q", "c"), meaning.of("q", "d")) == (0.8, 1.0, 0.0, 0.0)
    assert meaning.close("q", "a"), "close to what is asked and to the whole question"
    assert not meaning.close("q", "b"), "answers what is asked, about something else than was named"
    assert not meaning.close("q", "c"), "shares the names only"
    with pytest.raises(ValueError, match="4 vectors for 1 parts and 1 sentences"):
        Meaning.from_vectors(["q"], ["a"], [[1.0]] * 4, 0.35)
    assert Meaning.texts(["Who runs Fernholt café?"], ["s"]) == ["Who runs Fernholt café?", "Who runs café?", "s"]


@pytest.mark.parametrize("part,asked", [
    ("Who is the present managing director of Northwind Rail?", "Who is the present managing director of?"),
    ("How long does it take to ride up from Fernholt to Lake Varn?", "How long does it take to ride up from to?"),
    ("Whose idea was it to set up the firm?", "Whose idea was it to set up the firm?"),  # no name: as it is
    ("Who is Margit Halvorsen?", "Who is Margit Halvorsen?"),  # nothing but a name would be left
    ("how long does that journey take? (Fernholt, Lake Varn)", "how long does that journey take? (Fernholt, Lake Varn)"),
])
def test_a_part_is_embedded_without_its_names(part: str, asked: str) -> None:
    assert asked_form(part) == asked


def test_candidate_sentences_skip_duplicates_fragments_and_headings() -> None:
    assert candidate_sentences(["# Company history\n" + FOUNDING + " Yes.", FOUNDING + " " + TRAINS_OWNED]) == [FOUNDING, TRAINS_OWNED]


def test_a_paraphrase_is_quoted_by_meaning_when_it_shares_no_word() -> None:
    passages = [TRAINS_OWNED + " " + FOUNDING]
    assert extractive_answer(PARAPHRASE, passages, 0.5, 1) == []  # by words: nothing
    quotes = extractive_answer(PARAPHRASE, passages, 0.5, 1, _meaning({FOUNDING: 0.6, TRAINS_OWNED: 0.3}))
    assert [q.text for q in quotes] == [FOUNDING]
    # below min_similarity and sharing no word: not quoted
    assert extractive_answer(PARAPHRASE, passages, 0.5, 1, _meaning({FOUNDING: 0.3, TRAINS_OWNED: 0.2})) == []


def test_words_and_meaning_are_fused_by_rank() -> None:
    question = "How many trains does the company own?"
    words_only = "The company owns a depot and the trains stop there."  # many shared words, no figure
    passages = [words_only + " " + TRAINS_OWNED + " " + FOUNDING]
    by_words = [q.text for q in _scored_sentences(question, passages, 0.3)]
    assert by_words[0] == TRAINS_OWNED  # the asked-for figure ranks it first
    meaning = _meaning({words_only: 0.5, TRAINS_OWNED: 0.7, FOUNDING: 0.4}, question)
    fused = _scored_sentences(question, passages, 0.3, meaning=meaning)
    # first in both orders, first fused; the founding sentence enters on meaning alone, last
    assert [q.text for q in fused] == [TRAINS_OWNED, words_only, FOUNDING]
    assert fused[0].score == pytest.approx(2 / (RRF_K + 1))


def test_focus_reads_the_sentences_close_in_meaning() -> None:
    passages = [TRAINS_OWNED + " " + FOUNDING]
    answer = "It was set up by Margit Halvorsen."
    assert check_answer(answer, passages, question=PARAPHRASE, checks=("focus",)) == []  # no focus: passes
    far = _meaning({TRAINS_OWNED: 0.6, FOUNDING: 0.1})
    assert check_answer(answer, passages, question=PARAPHRASE, checks=("focus",), focus_count=1, meaning=far) == [
        "not in the sentences about the question: Margit Halvorsen"
    ]
    near = _meaning({TRAINS_OWNED: 0.1, FOUNDING: 0.6})
    assert check_answer(answer, passages, question=PARAPHRASE, checks=("focus",), focus_count=1, meaning=near) == []


def test_focus_by_meaning_never_outranks_sentences_that_share_the_words() -> None:
    employs = "It employs about 1,450 people."
    passages = [TRAINS_OWNED + " " + employs]
    question = "How many people does the company employ?"
    # by meaning the fleet sentence is closest (same topic), but the words point at the staff
    topical = _meaning({TRAINS_OWNED: 0.7, employs: 0.5}, question)
    assert check_answer("The fleet is 38 trains.", passages, question=question, checks=("focus",), focus_count=1,
                        meaning=topical) == ["not in the sentences about the question: 38"]


def test_each_part_of_a_question_needs_its_own_fact() -> None:
    passages = ["Northwind Rail was founded in 1994 by Margit Halvorsen. The Coastal Line is 84 km long."]
    question = "Who founded Northwind Rail, and how long is the Coastal Line?"
    only_first = "Margit Halvorsen founded it in 1994."  # a figure, but the founding year, not a length
    assert check_answer(only_first, passages, question=question, checks=("answer_type",)) == [
        "gives no figure although the question asks for one"
    ]
    both = "Margit Halvorsen founded it; the Coastal Line is 84 km long."
    assert check_answer(both, passages, question=question, checks=("answer_type",)) == []
    # asked whole, the year still counts as the figure (no part to hold it to)
    assert check_answer(only_first, passages, question="How long ago was it founded?", checks=("answer_type",)) == []


def test_where_wants_a_place_name_when_the_sentences_give_one() -> None:
    depot = "All trains are maintained at the depot in Aldergate, which employs 180 engineers."
    question = "Where is the depot at which all Northwind Rail trains are maintained?"
    assert missing_answer_type("The depot is the Northwind Rail app.", question, [depot]) == "name"
    assert missing_answer_type("The depot is in Aldergate.", question, [depot]) == ""
    # No name to give: quotes without one still answer a where-question.
    area = "On Kestrel-class trains, pushchairs should be parked in the multi-purpose area."
    asked = "Where should I park a pushchair on a Kestrel-class train?"
    assert missing_answer_type("In the multi-purpose area.", asked, [area]) == ""
    assert [q.text for q in extractive_answer(asked, [area], 0.3, 2)] == [area]


def test_a_part_that_refers_back_carries_the_names_of_the_part_before() -> None:
    question = "How much is a first class single from Fernholt to Lake Varn, and how long does that journey take?"
    assert question_parts(question) == [
        "How much is a first class single from Fernholt to Lake Varn",
        "how long does that journey take? (Fernholt, Lake Varn)",
    ]
    times = (
        "The journey from Ostervik Central to Fernholt takes 41 minutes. "
        "Trains run every hour, and the journey from Fernholt to Lake Varn takes 52 minutes."
    )
    fares = "| Fernholt – Lake Varn | €7.80 | €12.50 |"
    quotes = best_sentences(question, [fares, times], 0.3, 2)
    assert [q.text for q in quotes] == [fares, sentences(times)[1]]


def test_carried_names_count_half_and_never_tie_with_the_answering_sentence() -> None:
    question = "How many wheelchair spaces does a Kestrel-class unit have, and how many passengers does it seat?"
    second = question_parts(question)[1]
    assert second == "how many passengers does it seat? (Kestrel-class)"
    fleet = ACCESS + " On Kestrel-class trains, pushchairs go in the multi-purpose area."
    ranked = [q.text for q in _scored_sentences(second, [fleet], 0.5)]
    assert ranked[0] == "Each unit has three carriages and seats 210 passengers."


def test_a_name_from_outside_the_sentences_about_the_question_is_no_answer() -> None:
    # "Ostervik Central" is in every passage (the focus check lets the documents' subject pass),
    # but it is not who runs the café: the answer gives no name of its own.
    cafe = "Fernholt has a café, like Ostervik Central. The café on platform 2 is run by Linnea Dahl."
    hub = "Ostervik Central is the hub."
    question = "Who runs the platform café at Fernholt station?"
    answer = "The café at Fernholt is the one at Ostervik Central."
    assert missing_answer_type(answer, question, [cafe, hub], count=1) == "name"
    assert missing_answer_type("Linnea Dahl runs it.", question, [cafe, hub], count=1) == ""


FARES = (
    "Example fares\n\n| Journey | Standard single | First class single |\n|---|---|---|\n"
    "| Ostervik Central – Fernholt | €11.20 | €18.00 |\n| Fernholt – Lake Varn | €7.80 | €12.50 |"
)


def test_a_table_row_borrows_its_header_and_the_header_is_never_quoted() -> None:
    winter = "In winter, the first train of the day leaves Fernholt at 06:10 to serve the ski area at Lake Varn."
    question = "How much is a first class single from Fernholt to Lake Varn?"
    ranked = [q.text for q in _scored_sentences(question, [FARES, winter], 0.5)]
    # The row shares only the place names; "first class single" is its header's.
    assert ranked[0] == "| Fernholt – Lake Varn | €7.80 | €12.50 |"
    assert "| Journey | Standard single | First class single |" not in ranked


def test_the_asked_figure_must_stand_by_what_the_question_counts() -> None:
    assert asked_noun("How many passengers does a Kestrel-class unit seat?") == "passenger"
    assert asked_noun("What phone number do I call to book travel assistance?") == "phone"
    assert asked_noun("How long is the Coastal Line in kilometres?") == "km"
    assert asked_noun("How many of the stations are staffed?") == "station"
    assert asked_noun("What time is the first train in Ostervik?") == ""  # a place, not a unit
    booking = (
        "Please book assistance at least 24 hours before your journey.\n"
        "- by phone on 0800 555 0140, every day from 06:00 to 22:00, or"
    )
    question = "What phone number do I call for assistance?"
    ranked = _scored_sentences(question, [booking], 0.1)
    # Both hold a figure; only the phone line's stands by "phone", so only it ranks higher for it.
    assert [round(q.score, 2) for q in ranked] == [0.5, 0.25]
    assert ranked[0].text.startswith("- by phone")


def test_which_is_the_asks_for_a_name() -> None:
    assert asked_kinds("Which is the highest station on the network?") == {"name"}
    assert asked_kinds("Which is the highest station on the network?", strict=True) == set()
    assert asked_kinds("Which ticket should I buy?") == set()


def test_quotes_keep_the_order_retrieval_ranked_their_passages_in() -> None:
    # The retriever ranked the weaker sentence's passage first: its order is kept, since it
    # judges a whole passage, and measured better than the sentences' own scores (docs/quality.md).
    weaker = "Refund requests made on the day of departure are answered by the ticket office."
    quotes = best_sentences("How many days before departure can I get a full refund?", [weaker, REFUNDS], 0.5, 2)
    assert [(q.passage, q.text) for q in quotes] == [
        (0, weaker), (1, "Full refunds are available up to 7 days before departure.")
    ]


def test_a_quote_whose_figures_count_something_else_is_dropped_beside_one_that_answers() -> None:
    question = "How many passengers does a Kestrel-class unit seat?"
    quotes = extractive_answer(question, [ACCESS], 0.3, 2)
    assert [q.text for q in quotes] == ["Each unit has three carriages and seats 210 passengers."]
    # Without a sentence that gives the counted figure, the quotes stay as they are.
    spaces = "Every Kestrel-class train has 2 wheelchair spaces per unit."
    assert [q.text for q in extractive_answer(question, [spaces], 0.3, 2)] == [spaces]


def test_a_how_many_question_wants_the_figure_the_sentences_give_of_what_it_counts() -> None:
    question = "How many passengers does a Kestrel-class unit seat?"
    assert missing_answer_type("The Kestrel-class units are 2.", question, [ACCESS]) == "figure of passenger"
    assert missing_answer_type("A unit seats 210.", question, [ACCESS]) == ""
    assert missing_answer_type("Each unit seats 210 passengers.", question, [ACCESS]) == ""
    # No sentence gives a figure of passengers: any figure of the focus will do, as before.
    spaces = "Every Kestrel-class train has 2 wheelchair spaces per unit."
    assert missing_answer_type("It has 2.", question, [spaces]) == ""
