"""The README's examples run as written, so the front door cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_opens_with_one_sentence_then_the_two_set_up_commands() -> None:
    lines = [line for line in README.read_text().splitlines() if line.strip()]

    assert lines[0] == "# tidings"
    assert lines[1].count(". ") == 0
    assert lines[2] == "```bash"
    assert lines[3].startswith("make demo")
    assert lines[4].startswith("make test")


def test_the_hello_world_has_at_most_15_lines_and_prints_the_receipt() -> None:
    hello = _python_blocks()[0]

    assert len(hello.strip().splitlines()) <= 15
    ran = subprocess.run([sys.executable, "-c", hello], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "receipt for o-1\n"
