"""docs/benchmarks.md holds one section per benchmark; each run rewrites only its own."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = ("# Benchmarks\n\nWritten by the scripts in `bench/` (`make bench`); each section is "
          "replaced by the run that produced it. These are measurements on a shared machine, "
          "not timed tests.\n")


def write_section(key: str, title: str, body: str) -> None:
    text = DOC.read_text() if DOC.exists() else HEADER
    block = f"<!-- {key}:start -->\n## {title}\n\n{body.strip()}\n<!-- {key}:end -->"
    pattern = re.compile(rf"<!-- {key}:start -->.*?<!-- {key}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + block + "\n")
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
