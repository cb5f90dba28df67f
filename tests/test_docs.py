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
