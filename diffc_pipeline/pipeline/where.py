"""``--where``: a small SQL-like filter over an archive's scalar columns, as a pyarrow expression.

Grammar: comparisons (``= == != <> < <= > >=``) of a column with a literal, ``IN (...)``, ``IS [NOT] NULL``,
``[NOT] LIKE 'pat%'`` (prefix/suffix/contains), combined with ``AND``/``OR``/``NOT`` and parentheses. E.g.
``width >= 64 AND id LIKE 'val_1%'``. Python's own ``ast`` parses the expression (after SQL keywords are
mapped to Python ones outside string literals), and only the node types below are accepted - nothing is
ever evaluated as code.
"""

from __future__ import annotations

import ast
import re

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DiffcError


class FilterError(DiffcError):
    """A ``--where`` filter does not parse or names an unknown column."""


_TOKENS = re.compile(
    r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")|(<>|!=|<=|>=|==|=)|\b(NOT\s+LIKE|AND|OR|NOT|IN|IS|NULL|LIKE)\b", re.I
)
_WORDS = {
    "and": " and ",
    "or": " or ",
    "not": " not ",
    "in": " in ",
    "is": " is ",
    "null": " None ",
    "like": " << ",
    "not like": " >> ",
}
_OPS = {"=": "==", "<>": "!=", "!=": "!=", "==": "==", "<=": "<=", ">=": ">="}


def _to_python(text: str) -> str:
    def repl(m: re.Match) -> str:
        literal, op, word = m.groups()
        if literal:  # a string, whichever quotes: never Python escapes ("dir\file" is those 8 characters)
            quote = literal[0]
            return repr(literal[1:-1].replace(quote * 2, quote))
        if op:
            return f" {_OPS[op]} "
        return _WORDS[" ".join(word.lower().split())]

    return _TOKENS.sub(repl, text)


def parse_where(text: str, columns: list[str]) -> pc.Expression:
    """Parse ``text`` into a pyarrow expression over ``columns``, or raise :class:`FilterError`."""
    try:
        tree = ast.parse(_to_python(text).strip(), mode="eval")
    except SyntaxError as exc:
        raise FilterError(f"cannot parse --where {text!r}: {exc.msg}") from None
    return _Converter(text, columns).visit(tree.body)


def filter_rows(table: pa.Table, text: str, columns: list[str]) -> pa.Table:
    """The rows of ``table`` that ``--where`` ``text`` keeps. A filter that parses but does not fit the columns'
    types (``width = '64'``, ``id > 3``) is a :class:`FilterError` naming the problem, not an Arrow traceback."""
    try:  # a list of mixed types ("IN (64, 'a')") fails as the expression is built
        return table.filter(parse_where(text, columns))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        detail = str(exc).splitlines()[0]
        raise FilterError(f"--where {text!r} does not fit the columns' types ({detail})") from None


class _Converter(ast.NodeVisitor):
    def __init__(self, text: str, columns: list[str]) -> None:
        self.text = text
        self.columns = columns

    def fail(self, what: str) -> FilterError:
        return FilterError(f"--where {self.text!r}: {what}")

    def generic_visit(self, node: ast.AST):
        raise self.fail(f"unsupported syntax ({type(node).__name__})")

    def visit_BoolOp(self, node: ast.BoolOp) -> pc.Expression:
        parts = [self.visit(v) for v in node.values]
        out = parts[0]
        for p in parts[1:]:
            out = (out & p) if isinstance(node.op, ast.And) else (out | p)
        return out

    def visit_UnaryOp(self, node: ast.UnaryOp) -> pc.Expression:
        if not isinstance(node.op, ast.Not):
            raise self.fail("only NOT is allowed as a unary operator")
        return ~self.visit(node.operand)

    def visit_Compare(self, node: ast.Compare) -> pc.Expression:
        if len(node.ops) != 1:
            raise self.fail("chain comparisons with AND")
        op, left, right = node.ops[0], self.column(node.left), node.comparators[0]
        if isinstance(op, ast.Is | ast.IsNot):
            if not (isinstance(right, ast.Constant) and right.value is None):
                raise self.fail("IS needs NULL")
            return left.is_null() if isinstance(op, ast.Is) else ~left.is_null()
        if isinstance(op, ast.In | ast.NotIn):
            if isinstance(right, ast.Constant):  # "IN (64)": Python reads one parenthesised value as that value
                values = [self.literal(right)]
            elif isinstance(right, ast.Tuple | ast.List):
                values = [self.literal(v) for v in right.elts]
            else:
                raise self.fail("IN needs a parenthesised list of values")
            expr = left.isin(values)
            return expr if isinstance(op, ast.In) else ~expr
        value = self.literal(right)
        if value is None:  # SQL's "= NULL" is never true: a filter that silently matches nothing
            raise self.fail("compare with NULL using IS NULL or IS NOT NULL")
        ops = {
            ast.Eq: pc.equal,
            ast.NotEq: pc.not_equal,
            ast.Lt: pc.less,
            ast.LtE: pc.less_equal,
            ast.Gt: pc.greater,
            ast.GtE: pc.greater_equal,
        }
        return ops[type(op)](left, value)

    def visit_BinOp(self, node: ast.BinOp) -> pc.Expression:
        if not isinstance(node.op, ast.LShift | ast.RShift):  # LIKE was mapped to <<, NOT LIKE to >>
            raise self.fail("arithmetic is not supported")
        pattern = self.literal(node.right)
        if not isinstance(pattern, str):
            raise self.fail("LIKE needs a string pattern")
        like = pc.match_like(self.column(node.left), pattern)
        return like if isinstance(node.op, ast.LShift) else ~like

    def column(self, node: ast.AST) -> pc.Expression:
        if not isinstance(node, ast.Name):
            raise self.fail("the left side of a comparison must be a column name")
        if node.id not in self.columns:
            raise self.fail(f"unknown column {node.id!r} (columns: {', '.join(self.columns)})")
        return pc.field(node.id)

    def literal(self, node: ast.AST):
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            return self.in_range(-node.operand.value)
        if not isinstance(node, ast.Constant) or isinstance(node.value, bytes):
            raise self.fail("values must be numbers or quoted strings")
        return self.in_range(node.value)

    def in_range(self, value):
        """Integers beyond 64 bits overflowed in Arrow with a traceback; no column holds them."""
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise self.fail(f"{value} is out of the signed 64-bit integer range")
        return value
