"""The documentation says what the code does: the benchmark list, the README's copy-paste configs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _first_table(text: str) -> list[str]:
    """The rows of the first Markdown table in ``text`` (a table ends at the first line that is not a row)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows[2:]  # without the header and its rule


def test_every_benchmark_is_a_row_of_the_one_table_in_bench_readme() -> None:
    rows = _first_table((ROOT / "bench" / "README.md").read_text())
    listed = {m.group(1): row for row in rows if (m := re.match(r"\| `(\w+\.py)` \|", row))}
    scripts = {p.name for p in (ROOT / "bench").glob("*.py") if p.name != "common.py"}
    assert sorted(listed) == sorted(scripts)  # one table: a blank line would cut the rows after it off
    for name, row in listed.items():
        assert f"bench/{name}" in row.rsplit("|", 2)[1], f"{name}: the row's last column gives its command"
