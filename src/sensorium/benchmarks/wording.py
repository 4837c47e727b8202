"""English for the generated captions and questions, shared by every generator so that they read alike."""

from __future__ import annotations

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}


def with_article(phrase: str) -> str:
    """'a red circle', 'an orange star'."""
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def join_phrases(phrases: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return phrases[0] if len(phrases) == 1 else f"{', '.join(phrases[:-1])} and {phrases[-1]}"
