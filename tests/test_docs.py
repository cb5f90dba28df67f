import os

from apppaccap.docs import render


def test_api_md_is_current():
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "API.md")
    with open(path) as fh:
        assert fh.read() == render(), "docs/API.md is stale: run `make docs`"


def test_every_action_documented():
    from apppaccap.api.registry import REGISTRY
    for act in REGISTRY.endpoints.values():
        assert act.summary, act.name
        for p in act.params:
            assert p.doc, f"{act.name}: parameter {p.name} has no `- {p.name}:` doc line"


def test_docs_and_comments_cite_only_the_repository():
    """Design notes outside the repository are not cited; what the code relies on from
    them is in docs/DECISIONS.md (RFC sections are fine)."""
    import glob
    import re

    root = os.path.join(os.path.dirname(__file__), "..")
    outside = re.compile(r"\bnotes/|\bseeds/|\bDES" r"IGN\b|(?<!RFC \d{4} )\u00a7")
    paths = [p for pattern in ("apppaccap/**/*.py", "apppaccap/**/*.c", "tests/**/*.py",
                               "benchmarks/*.py", "docs/*.md", "README.md", "themes/**/*.js",
                               "themes/**/*.html", "themes/**/*.md", "installer/*")
             for p in glob.glob(os.path.join(root, pattern), recursive=True)]
    found = []
    for path in sorted(set(paths)):
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if outside.search(line):
                    found.append(f"{os.path.relpath(path, root)}:{n}: {line.strip()}")
    assert len(paths) > 100 and not found, "\n".join(found)
