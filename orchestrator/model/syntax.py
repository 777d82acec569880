"""The expression language's syntax: tokens, AST nodes and the hand-written parser.

orchestrator/model/expressions.py turns the nodes into closures and evaluates them; user text is
never handed to Python's own evaluator.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Callable
from typing import Any, NamedTuple

from orchestrator.errors import ExpressionError

MAX_LENGTH = 2000
MAX_DEPTH = 50

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"'}
# One alternation scanned with re.finditer; `bad` catches any other character, so every
# character of the source lands in exactly one token.
_TOKEN_PATTERN = r"""
    (?P<ws>\s+)
  | (?P<num>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op>==|!=|<=|>=|//|[-+*/%<>()\[\],.])
  | (?P<bad>.)
"""
# Characters people type out of habit from other languages get a pointer to our spelling.
_CHAR_HINTS = {
    "=": "use '==' to compare",
    "!": "use 'not' or '!='",
    "&": "use 'and'",
    "|": "use 'or'",
}
_CONSTANTS = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}
_KEYWORDS = frozenset({"and", "or", "not", "in"})
_COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">="})


class _Tok(NamedTuple):
    kind: str  # "num", "str", "name", "op" or "end"
    value: Any
    start: int
    end: int


# AST nodes. An Access is a root plus a flat run of steps, so long `a.b.c...` chains never
# recurse when evaluated and their constant prefix (for paths()) is read off directly.
Const = namedtuple("Const", "value")
Name = namedtuple("Name", "name")
ListLit = namedtuple("ListLit", "items")
Not = namedtuple("Not", "operand")
Unary = namedtuple("Unary", "op operand")
BoolOp = namedtuple("BoolOp", "op operands")
Arith = namedtuple("Arith", "first rest")  # rest: ((op, node), ...)
Compare = namedtuple("Compare", "op left right")
Access = namedtuple("Access", "root steps")


class Step(NamedTuple):
    attr: bool  # `.name` rather than `[index]`
    key: Any  # the constant key; meaningful only when expr is None
    expr: Any  # index expression node, or None for a constant key
    label: str  # source-like path of the value this step applies to, for error messages
    text: str  # this step as written: ".name" or "[index]"


def short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(source: str, what: str, pos: int, hint: str = "") -> ExpressionError:
    col = pos + 1
    message = f"{what} at column {col} in {short(source)!r}" + (f"; {hint}" if hint else "")
    return ExpressionError(message, expression=source, position=col)


def _tokenize(src: str) -> list[_Tok]:
    """Split source text into tokens, raising ExpressionError on anything unrecognised."""
    toks: list[_Tok] = []
    for m in re.finditer(_TOKEN_PATTERN, src, re.VERBOSE | re.DOTALL):
        kind, text, start = m.lastgroup or "bad", m.group(), m.start()
        if kind == "ws":
            continue
        if kind == "bad":
            if text in "'\"":
                raise fail(src, "unterminated string", start)
            raise fail(src, f"unexpected {text!r}", start, _CHAR_HINTS.get(text, ""))
        if kind == "num":
            value: Any = float(text) if any(c in text for c in ".eE") else int(text)
        elif kind == "str":
            value = _unescape(src, start, text)
        else:
            value = text
        toks.append(_Tok(kind, value, start, m.end()))
    toks.append(_Tok("end", None, len(src), len(src)))
    return toks


def _unescape(src: str, start: int, literal: str) -> str:
    """Decode the backslash escapes of a quoted string token found at `start`."""

    def replace(m: re.Match) -> str:
        if m.group(1) not in _ESCAPES:
            raise fail(src, f"invalid escape '{m.group()}' in string", start + 1 + m.start())
        return _ESCAPES[m.group(1)]

    return re.sub(r"\\(.)", replace, literal[1:-1], flags=re.DOTALL)


class Parser:
    """Recursive-descent parser; one instance per parse."""

    def __init__(self, source: str):
        self.src = source
        self.toks = _tokenize(source)
        self.i = 0
        self.depth = 0

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def advance(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def is_op(self, value: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "op" and tok.value == value

    def is_kw(self, value: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind == "name" and tok.value == value

    def unexpected(self, tok: _Tok) -> ExpressionError:
        if tok.kind == "end":
            return fail(self.src, "unexpected end of expression", tok.start)
        hint = "use '==' or '!='" if tok.value == "is" and tok.kind == "name" else ""
        what = self.src[tok.start : tok.end]
        return fail(
            self.src,
            f"unexpected {'string ' + what if tok.kind == 'str' else repr(what)}",
            tok.start,
            hint,
        )

    def expect(self, value: str) -> _Tok:
        if not self.is_op(value):
            tok = self.peek()
            found = (
                "end of expression" if tok.kind == "end" else repr(self.src[tok.start : tok.end])
            )
            raise fail(self.src, f"expected {value!r} but found {found}", tok.start)
        return self.advance()

    def enter(self, tok: _Tok) -> None:
        # Bounding nesting bounds recursion in the parser and in the built closures alike.
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise fail(
                self.src, f"expression is nested more than {MAX_DEPTH} levels deep", tok.start
            )

    def nested(self, tok: _Tok) -> Any:
        self.enter(tok)
        node = self.or_expr()
        self.depth -= 1
        return node

    def parse(self) -> Any:
        if self.peek().kind == "end":
            raise ExpressionError("empty expression", expression=self.src, position=1)
        node = self.or_expr()
        if self.peek().kind != "end":
            raise self.unexpected(self.peek())
        return node

    def or_expr(self) -> Any:
        return self.bool_chain("or", self.and_expr)

    def and_expr(self) -> Any:
        return self.bool_chain("and", self.not_expr)

    def bool_chain(self, word: str, operand: Callable[[], Any]) -> Any:
        nodes = [operand()]
        while self.is_kw(word):
            self.advance()
            nodes.append(operand())
        return nodes[0] if len(nodes) == 1 else BoolOp(word, tuple(nodes))

    def not_expr(self) -> Any:
        if not self.is_kw("not"):
            return self.comparison()
        self.enter(self.advance())
        node = Not(self.not_expr())
        self.depth -= 1
        return node

    def comparison_op(self) -> str | None:
        tok = self.peek()
        if tok.kind == "op" and tok.value in _COMPARISONS:
            return tok.value
        if self.is_kw("in"):
            return "in"
        if self.is_kw("not") and self.is_kw("in", 1):
            return "not in"
        return None

    def comparison(self) -> Any:
        left = self.additive()
        op = self.comparison_op()
        if op is None:
            return left
        self.i += 2 if op == "not in" else 1
        right = self.additive()
        if self.comparison_op() is not None:
            raise fail(
                self.src,
                "chained comparisons are not supported",
                self.peek().start,
                "combine them with 'and', e.g. 'a < b and b < c'",
            )
        return Compare(op, left, right)

    def additive(self) -> Any:
        return self.arith(("+", "-"), self.multiplicative)

    def multiplicative(self) -> Any:
        return self.arith(("*", "/", "//", "%"), self.unary)

    def arith(self, ops: tuple[str, ...], operand: Callable[[], Any]) -> Any:
        first, rest = operand(), []
        while self.peek().kind == "op" and self.peek().value in ops:
            rest.append((self.advance().value, operand()))
        return Arith(first, tuple(rest)) if rest else first

    def unary(self) -> Any:
        if not (self.is_op("-") or self.is_op("+")):
            return self.postfix()
        tok = self.advance()
        self.enter(tok)
        operand = self.unary()
        self.depth -= 1
        # Folding negative literals makes `items[-1]` a constant index for paths().
        if type(operand) is Const and type(operand.value) in (int, float):
            return Const(-operand.value if tok.value == "-" else operand.value)
        return Unary(tok.value, operand)

    def postfix(self) -> Any:
        start = self.peek().start
        node = self.primary()
        if not (self.is_op(".") or self.is_op("[") or self.is_op("(")):
            return node
        if type(node) is Access:  # `(a.b).c` continues the chain of `a.b`
            root, steps = node.root, list(node.steps)
            label = steps[-1].label + steps[-1].text
        else:
            root, steps = node, []
            label = node.name if type(node) is Name else self.src[start : self.toks[self.i - 1].end]
        while True:
            tok = self.peek()
            if self.is_op("."):
                self.advance()
                name_tok = self.advance()
                if name_tok.kind != "name":
                    raise fail(self.src, "expected a name after '.'", name_tok.start)
                self.check_name(name_tok)
                step = Step(True, name_tok.value, None, label, "." + name_tok.value)
            elif self.is_op("["):
                self.advance()
                index = self.nested(tok)
                close = self.expect("]")
                text = "[" + self.src[tok.end : close.start].strip() + "]"
                if type(index) is Const:
                    step = Step(False, index.value, None, label, text)
                else:
                    step = Step(False, None, index, label, text)
            elif self.is_op("("):
                raise fail(self.src, "function calls are not allowed", tok.start)
            else:
                return Access(root, tuple(steps))
            steps.append(step)
            label += step.text

    def check_name(self, tok: _Tok) -> None:
        if tok.value.startswith("_"):
            raise fail(
                self.src, f"names starting with '_' are not allowed ({tok.value!r})", tok.start
            )

    def primary(self) -> Any:
        tok = self.advance()
        if tok.kind in ("num", "str"):
            return Const(tok.value)
        if tok.kind == "name":
            if tok.value in _CONSTANTS:
                return Const(_CONSTANTS[tok.value])
            if tok.value in _KEYWORDS:
                raise self.unexpected(tok)
            self.check_name(tok)
            return Name(tok.value)
        if tok.kind == "op" and tok.value == "(":
            node = self.nested(tok)
            self.expect(")")
            return node
        if tok.kind == "op" and tok.value == "[":
            items = []
            while not self.is_op("]"):
                items.append(self.nested(tok))
                if not self.is_op(","):
                    break
                self.advance()
            self.expect("]")
            return ListLit(tuple(items))
        raise self.unexpected(tok)


# ---- evaluation -------------------------------------------------------------------------------
