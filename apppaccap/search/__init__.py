"""The search language: a Wireshark display-filter subset compiled to SQL
(docs/FILTERS.md; docs/DECISIONS.md: the search language).

Pipeline: `lexer` (text → tokens with positions) → `parser` (tokens → AST) →
`checker` (AST + `fields` table → typed AST, every value validated) → `compiler`
(typed AST + one capture's `Scope` → SQL condition with bound parameters, plus a Python
predicate for what SQL cannot answer) → `scan` (runs the plan over a capture in id
chunks) → `engine` (asynchronous searches, their catalog rows and results) and
`pcapng` (search results of several captures → one file).

`parse_filter(text)` is the one entry point for "is this filter valid"; it raises
`FilterError` whose `message` is what the API returns (prefixed with the parameter).
"""

from apppaccap.search.checker import parse_filter
from apppaccap.search.lexer import FilterError

__all__ = ["FilterError", "parse_filter"]
