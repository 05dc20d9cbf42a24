"""The evaluation harness: a labelled question set run through the real gateway against
pipeline versions, scored for accuracy, citations, groundedness, fallbacks, prompt leaks
and latency (``ragrail eval``, ``make eval``; docs/quality.md)."""
