"""Put the figures of the last `make bench` into README.md.

`make bench` saves what each benchmark prints to bench/results/<name>.md. README.md marks where each
benchmark's figures go:

    <!-- bench:bench_trace -->
    ...replaced...
    <!-- /bench:bench_trace -->

This script replaces the text between each pair of markers with the saved output of that benchmark, so
the README's tables are the ones the command printed, not figures typed by hand. A benchmark with no
saved output leaves its block alone and is named on stderr; a saved output with no block is named too.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BLOCK = re.compile(r"(<!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.DOTALL)


def fill(readme: str, results: dict[str, str]) -> tuple[str, list[str], list[str]]:
    """`readme` with every marked block replaced by its benchmark's output; also the names of blocks
    left alone (no output saved) and of outputs that have no block."""
    missing: list[str] = []
    seen: set[str] = set()

    def replace(match: re.Match) -> str:
        name = match["name"]
        seen.add(name)
        if name not in results:
            missing.append(name)
            return match.group(0)
        body = results[name].strip("\n") + "\n"
        return f"{match.group(1)}\n{body}\n{match.group(4)}"

    filled = BLOCK.sub(replace, readme)
    return filled, missing, sorted(set(results) - seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = {p.stem: p.read_text(encoding="utf-8") for p in sorted(args.results.glob("*.md"))}
    filled, missing, unplaced = fill(args.readme.read_text(encoding="utf-8"), results)
    tmp = args.readme.with_suffix(".md.tmp")
    tmp.write_text(filled, encoding="utf-8")
    tmp.replace(args.readme)  # never a half-written README
    for name in missing:
        print(f"no saved output for {name}: its README block is unchanged", file=sys.stderr)
    for name in unplaced:
        print(f"bench/results/{name}.md has no <!-- bench:{name} --> block in the README", file=sys.stderr)


if __name__ == "__main__":
    main()
