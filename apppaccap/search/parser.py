"""Tokens → abstract syntax tree (recursive descent).

Precedence, loosest first, as in Wireshark: `or ||`, `xor ^^`, `and &&`, `not !`.
(tshark 4.0 itself has no xor; we accept it: docs/DECISIONS.md: the search
language.) A relation is `field`, `field OP value`, `field in {set}`, `field not in
{set}`, `field contains v`, `field matches "re"`, `field & mask` and `field & mask OP
value`.

The AST here is untyped: values are raw tokens; `checker` resolves fields and values.
"""

from __future__ import annotations

from dataclasses import dataclass

from apppaccap.search.lexer import FilterError
from apppaccap.search.lexer import Token
from apppaccap.search.lexer import tokenize


@dataclass
class Or:
    items: list


@dataclass
class And:
    items: list


@dataclass
class Xor:
    items: list


@dataclass
class Not:
    item: object


@dataclass
class Relation:
    """`field [& mask] [op rhs]`; op None = existence (or bit test when mask is set)."""

    field: Token
    op: str | None = None          # eq ne all_eq any_ne gt ge lt le in contains matches
    rhs: object = None             # Token, or for `in` a list of Token / (Token, Token)
    mask: Token | None = None
    pos: int = 0                   # of the operator (or the field when op is None)


_RELATION_START = ("CMP", "IN", "CONTAINS", "MATCHES")


def parse(text: str):
    """Parse filter text into an AST; raises FilterError with a position."""
    if not text.strip():
        raise FilterError("empty filter", 0)
    p = _Parser(tokenize(text))
    node = p.or_expr()
    tok = p.peek()
    if tok.kind != "EOF":
        if tok.kind == "RPAREN":
            raise FilterError("unbalanced ')'", tok.pos)
        raise FilterError(f"{_describe(tok)} was unexpected here (expected and/or/xor)",
                          tok.pos)
    return node


def _describe(tok: Token) -> str:
    if tok.kind == "EOF":
        return "end of filter"
    return repr(tok.text)


class _Parser:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != "EOF":
            self.i += 1
        return tok

    def expect(self, kind: str, what: str) -> Token:
        tok = self.peek()
        if tok.kind != kind:
            raise FilterError(f"expected {what}, found {_describe(tok)}", tok.pos)
        return self.take()

    def _chain(self, kind, cls, sub):
        items = [sub()]
        while self.peek().kind == kind:
            self.take()
            items.append(sub())
        return items[0] if len(items) == 1 else cls(items)

    def or_expr(self):
        return self._chain("OR", Or, self.xor_expr)

    def xor_expr(self):
        return self._chain("XOR", Xor, self.and_expr)

    def and_expr(self):
        return self._chain("AND", And, self.unary)

    def unary(self):
        if self.peek().kind == "NOT":
            tok = self.take()
            self.depth += 1  # `! ! ! ...` nests as parentheses do, within the same bound
            if self.depth > 100:
                raise FilterError("'not' repeated too many times", tok.pos)
            node = Not(self.unary())
            self.depth -= 1
            return node
        return self.primary()

    def primary(self):
        tok = self.peek()
        if tok.kind == "LPAREN":
            self.depth += 1
            if self.depth > 100:  # bounded recursion: a filter is typed by a person
                raise FilterError("parentheses nested too deeply", tok.pos)
            self.take()
            node = self.or_expr()
            close = self.peek()
            if close.kind != "RPAREN":
                raise FilterError(f"missing ')' for the '(' at position {tok.pos}", close.pos)
            self.take()
            self.depth -= 1
            return node
        if tok.kind == "WORD":
            return self.relation()
        if tok.kind == "STRING":
            raise FilterError("a filter term starts with a field name, not a string", tok.pos)
        if tok.kind == "EOF":
            raise FilterError("filter ends where a field name was expected", tok.pos)
        raise FilterError(f"expected a field name, found {_describe(tok)}", tok.pos)

    def relation(self) -> Relation:
        field = self.take()
        mask = None
        if self.peek().kind == "BITAND":
            self.take()
            mask = self.value("a bit mask after '&'")
        tok = self.peek()
        if tok.kind == "NOT" and tok.text == "not" and self.peek(1).kind == "IN":
            self.take()
            self.take()
            return Not(Relation(field, "in", self.set_items(), mask, tok.pos))
        if tok.kind not in _RELATION_START:
            if tok.kind in ("WORD", "STRING"):
                raise FilterError(f"{_describe(tok)} was unexpected here "
                                  "(expected an operator such as == or contains)", tok.pos)
            return Relation(field, None, None, mask, field.pos)
        self.take()
        if tok.kind == "CMP":
            return Relation(field, tok.value, self.value(f"a value after {tok.text!r}"), mask,
                            tok.pos)
        if tok.kind == "IN":
            return Relation(field, "in", self.set_items(), mask, tok.pos)
        op = "contains" if tok.kind == "CONTAINS" else "matches"
        return Relation(field, op, self.value(f"a value after {tok.text!r}"), mask, tok.pos)

    def value(self, what: str) -> Token:
        tok = self.peek()
        if tok.kind in ("WORD", "STRING"):
            return self.take()
        raise FilterError(f"expected {what}, found {_describe(tok)}", tok.pos)

    def set_items(self) -> list:
        self.expect("LBRACE", "'{' to start a set")
        items: list = []
        while True:
            tok = self.peek()
            if tok.kind == "RBRACE":
                if not items:
                    raise FilterError("empty set", tok.pos)
                self.take()
                return items
            if tok.kind == "COMMA" and items:
                self.take()  # tshark 4.0 needs commas, older ones spaces: take both
                continue
            low = self.value("a set member or '}'")
            if self.peek().kind == "DOTDOT":
                self.take()
                items.append((low, self.value("the upper end of a range after '..'")))
            else:
                items.append(low)
            if len(items) > 10000:
                raise FilterError("sets are limited to 10000 members", low.pos)
