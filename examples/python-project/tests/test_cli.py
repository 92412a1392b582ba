import subprocess
import sys
import unittest


class CliTest(unittest.TestCase):
    def test_stdin(self) -> None:
        out = subprocess.run(
            [sys.executable, "-m", "textstats"],
            input="a b a",
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        self.assertIn("words: 3", out)
        self.assertIn("a: 2", out)


if __name__ == "__main__":
    unittest.main()
