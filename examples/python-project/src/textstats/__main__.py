"""Command line: ``python -m textstats FILE`` prints the word count and top words."""

import sys

from textstats.core import top_words, word_count


def main() -> int:
    text = open(sys.argv[1], encoding="utf-8").read() if len(sys.argv) > 1 else sys.stdin.read()
    print(f"words: {word_count(text)}")
    for word, count in top_words(text):
        print(f"{word}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
