"""Word counting."""

import re
from collections import Counter

_WORD = re.compile(r"[a-záéíóúñü']+", re.IGNORECASE)


def words(text: str) -> list[str]:
    """The words of ``text``, lower-cased."""
    return [w.lower() for w in _WORD.findall(text)]


def word_count(text: str) -> int:
    """How many words ``text`` has."""
    return len(words(text))


def top_words(text: str, n: int = 3) -> list[tuple[str, int]]:
    """The ``n`` most frequent words, ties broken alphabetically."""
    counts = Counter(words(text))
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
