"""A small tokenizer for SQLite's stored CREATE TABLE text.

SQLite keeps CHECK constraints, generation expressions, constraint names, deferrability and
AUTOINCREMENT only in the statement text; the pragmas give everything else. This reads the text,
never executes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))
   |(?P<str>'(?:[^']|'')*')
   |(?P<qid>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
   |(?P<punct>[(),;])
   |(?P<word>[^\s(),;'"`\[]+)
    """,
    re.S | re.X,
)


@dataclass
class Tok:
    kind: str
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    @property
    def ident(self) -> str:
        t = self.text
        if self.kind == "qid":
            if t[0] == "[":
                return t[1:-1]
            q = t[0]
            return t[1:-1].replace(q + q, q)
        if self.kind == "str":
            return t[1:-1].replace("''", "'")
        return t


def tokenize(sql: str) -> list[Tok]:
    out: list[Tok] = []
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup or "word"
        if kind == "ws":
            continue
        out.append(Tok(kind, m.group(), m.start(), m.end()))
    return out


@dataclass
class ParsedFk:
    name: str | None
    columns: list[str]
    to_table: str
    deferrable: bool = False
    initially_deferred: bool = False


@dataclass
class ParsedTable:
    checks: list[tuple[str | None, str]] = field(default_factory=list)
    generated: dict[str, tuple[str, str]] = field(default_factory=dict)  # column -> (expr, stored|virtual)
    autoincrement: set[str] = field(default_factory=set)
    pk_name: str | None = None
    unique_names: list[tuple[str | None, list[str]]] = field(default_factory=list)
    fks: list[ParsedFk] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


_COLUMN_CONSTRAINT_START = {
    "CONSTRAINT",
    "PRIMARY",
    "NOT",
    "NULL",
    "UNIQUE",
    "CHECK",
    "DEFAULT",
    "COLLATE",
    "REFERENCES",
    "GENERATED",
    "AS",
}
_TABLE_CONSTRAINT_START = {"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"}


def _match_paren(toks: list[Tok], i: int) -> int:
    """Index of the ')' matching the '(' at toks[i]."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].text == "(" and toks[j].kind == "punct":
            depth += 1
        elif toks[j].text == ")" and toks[j].kind == "punct":
            depth -= 1
            if depth == 0:
                return j
    return len(toks) - 1


def _split_items(toks: list[Tok]) -> list[list[Tok]]:
    items: list[list[Tok]] = [[]]
    depth = 0
    for t in toks:
        if t.kind == "punct" and t.text == "(":
            depth += 1
        elif t.kind == "punct" and t.text == ")":
            depth -= 1
        if depth == 0 and t.kind == "punct" and t.text == ",":
            items.append([])
            continue
        items[-1].append(t)
    return [i for i in items if i]


def _names_in_parens(toks: list[Tok], i: int) -> tuple[list[str], int]:
    end = _match_paren(toks, i)
    names: list[str] = []
    for item in _split_items(toks[i + 1 : end]):
        names.append(item[0].ident)
    return names, end


def _fk_tail(toks: list[Tok], i: int, fk: ParsedFk) -> int:
    """Consume REFERENCES tbl [(cols)] [ON ...] [MATCH ...] [[NOT] DEFERRABLE [INITIALLY ...]] starting at toks[i]."""
    n = len(toks)
    while i < n:
        u = toks[i].upper
        if u == "NOT" and i + 1 < n and toks[i + 1].upper == "DEFERRABLE":
            fk.deferrable = False
            i += 2
        elif u == "DEFERRABLE":
            fk.deferrable = True
            i += 1
        elif u == "INITIALLY" and i + 1 < n:
            fk.initially_deferred = toks[i + 1].upper == "DEFERRED"
            i += 2
        elif u in {"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "DEFAULT", "COLLATE", "GENERATED", "AS"} or (
            u == "NOT" and i + 1 < n and toks[i + 1].upper == "NULL"
        ):
            return i
        else:
            i += 1
    return i


def parse_create_table(sql: str) -> ParsedTable:
    out = ParsedTable()
    toks = tokenize(sql)
    start = next((k for k, t in enumerate(toks) if t.kind == "punct" and t.text == "("), None)
    if start is None:
        return out
    end = _match_paren(toks, start)
    for tail in _split_items(toks[end + 1 :]):
        words = " ".join(t.upper for t in tail if t.kind == "word")
        if words:
            out.options.append(words)
    for item in _split_items(toks[start + 1 : end]):
        if item[0].upper in _TABLE_CONSTRAINT_START and item[0].kind == "word":
            _table_constraint(sql, item, out)
        else:
            _column(sql, item, out)
    return out


def _expr(sql: str, toks: list[Tok], i: int) -> tuple[str, int]:
    end = _match_paren(toks, i)
    return sql[toks[i].end : toks[end].start].strip(), end


def _table_constraint(sql: str, item: list[Tok], out: ParsedTable) -> None:
    name: str | None = None
    i = 0
    if item[0].upper == "CONSTRAINT" and len(item) > 1:
        name = item[1].ident
        i = 2
    if i >= len(item):
        return
    kind = item[i].upper
    paren = next((k for k in range(i, len(item)) if item[k].text == "(" and item[k].kind == "punct"), None)
    if paren is None:
        return
    if kind == "CHECK":
        expr, _ = _expr(sql, item, paren)
        out.checks.append((name, expr))
    elif kind == "PRIMARY":
        out.pk_name = name
    elif kind == "UNIQUE":
        cols, _ = _names_in_parens(item, paren)
        out.unique_names.append((name, cols))
    elif kind == "FOREIGN":
        cols, k = _names_in_parens(item, paren)
        ref = next((x for x in range(k, len(item)) if item[x].upper == "REFERENCES"), None)
        if ref is None or ref + 1 >= len(item):
            return
        fk = ParsedFk(name, cols, item[ref + 1].ident)
        _fk_tail(item, ref + 2, fk)
        out.fks.append(fk)


def _column(sql: str, item: list[Tok], out: ParsedTable) -> None:
    col = item[0].ident
    i = 1
    n = len(item)
    while i < n and not (item[i].kind == "word" and item[i].upper in _COLUMN_CONSTRAINT_START):
        i += 1 if item[i].text != "(" else _match_paren(item, i) - i + 1
    name: str | None = None
    while i < n:
        u = item[i].upper
        if u == "CONSTRAINT" and i + 1 < n:
            name = item[i + 1].ident
            i += 2
            continue
        if u == "CHECK" and i + 1 < n and item[i + 1].text == "(":
            expr, end = _expr(sql, item, i + 1)
            out.checks.append((name, expr))
            i = end + 1
        elif u in {"GENERATED", "AS"}:
            paren = next((k for k in range(i, n) if item[k].text == "(" and item[k].kind == "punct"), None)
            if paren is None:
                return
            expr, end = _expr(sql, item, paren)
            storage = "virtual"
            if end + 1 < n and item[end + 1].upper == "STORED":
                storage = "stored"
                end += 1
            elif end + 1 < n and item[end + 1].upper == "VIRTUAL":
                end += 1
            out.generated[col] = (expr, storage)
            i = end + 1
        elif u == "PRIMARY":
            out.pk_name = name
            i += 1
        elif u == "UNIQUE":
            out.unique_names.append((name, [col]))
            i += 1
        elif u == "AUTOINCREMENT":
            out.autoincrement.add(col)
            i += 1
        elif u == "REFERENCES" and i + 1 < n:
            fk = ParsedFk(name, [col], item[i + 1].ident)
            i = _fk_tail(item, i + 2, fk)
            out.fks.append(fk)
            name = None
            continue
        elif u == "DEFAULT" and i + 1 < n and item[i + 1].text == "(":
            i = _match_paren(item, i + 1) + 1
        else:
            i += 1
            continue
        name = None
