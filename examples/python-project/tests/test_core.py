import unittest

from textstats import top_words, word_count


class WordCountTest(unittest.TestCase):
    def test_counts_words(self) -> None:
        self.assertEqual(word_count("the quick brown fox"), 4)

    def test_empty(self) -> None:
        self.assertEqual(word_count(""), 0)

    def test_accents(self) -> None:
        self.assertEqual(word_count("faena él año"), 3)


class TopWordsTest(unittest.TestCase):
    def test_most_frequent_first(self) -> None:
        self.assertEqual(top_words("b a b c b a", 2), [("b", 3), ("a", 2)])

    def test_ties_alphabetical(self) -> None:
        self.assertEqual(top_words("z y x", 2), [("x", 1), ("y", 1)])


if __name__ == "__main__":
    unittest.main()
