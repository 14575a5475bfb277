"""bench/readme_tables.py puts each benchmark's saved output into its marked README block."""

from __future__ import annotations

from bench.readme_tables import fill

README = """# Title

Some prose.

<!-- bench:bench_a -->
| old | table |
<!-- /bench:bench_a -->

Between.

<!-- bench:bench_b -->
kept as it was
<!-- /bench:bench_b -->
"""


def test_each_block_gets_its_own_benchmarks_output_and_nothing_else_changes():
    filled, missing, unplaced = fill(README, {"bench_a": "| new | table |\n|---|---|\n", "bench_c": "x"})
    assert "| new | table |\n|---|---|\n" in filled and "| old | table |" not in filled
    assert "kept as it was" in filled  # no output saved for bench_b: left alone and reported
    assert missing == ["bench_b"] and unplaced == ["bench_c"]

    def outside(text: str) -> list[str]:  # the lines that are not a table's, blank lines aside
        return [line for line in text.splitlines() if line.strip() and not line.startswith("|")]

    assert outside(filled) == outside(README)
    # Filling twice gives the same text: the markers survive the replacement.
    assert fill(filled, {"bench_a": "| new | table |\n|---|---|\n"})[0] == filled
