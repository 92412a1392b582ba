"""textstats: small text statistics, the project the example pipeline builds."""

__version__ = "1.2.0"

from textstats.core import top_words, word_count

__all__ = ["__version__", "top_words", "word_count"]
