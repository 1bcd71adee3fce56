"""The docs point only at files the repository has (a reader can follow every path they name)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = ("benchmarks", "configs", "docs", "clbench", "strategies", "scenarios", "tests", "leaderboard")


def test_every_repository_path_named_in_the_docs_exists():
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for m in re.finditer(r"`((?:%s)/[^`\s]+)`" % "|".join(TOP), doc.read_text()):
            path = re.split(r"::|:(?=[A-Za-z_])", m.group(1))[0].rstrip(".,:;)")
            if any(c in path for c in "<*{[$"):   # a pattern, not a file
                continue
            if not (ROOT / path).exists() and not (doc.parent / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, missing
