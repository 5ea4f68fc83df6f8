"""Refuse a ``.pt2`` program whose JSON holds a string that torch would evaluate as code.

torch's exported-program deserializer hands every symbolic size expression (``expr_str``) to
``sympy.sympify``, which runs ``eval`` on it; it turns each node's target string into a Python
object by walking attributes from ``torch``, ``operator`` or ``math`` (``torch.os.system`` would
do); and ``ExportedProgram.module()`` compiles the shape guards (``guards_code``) into a function.
So an archive with no pickle in it can still run code when it is read. :func:`check_program`
reads the program's JSON before torch does and accepts only what ``torch.export.save`` writes:

- expressions made of integers, symbol names (``s0``, ``s77``, ``u3``) and calls of sympy's
  and torch's arithmetic and comparison functions (``Add``, ``Mul``, ``FloorDiv``, ``Mod``,
  ``Max``, ``Eq``, ...) with assumption keywords (``positive=True``), parsed by :mod:`ast`
  (which evaluates nothing), never attribute access, subscripts, lambdas or other names;
- guards over the input's sizes (``L['x'].size()[2] // 4 <= 2 + s``) in the same spirit;
- node targets naming an operator (``torch.ops.aten.conv2d.default``) or one of the symbolic
  integer functions torch serialises (``_operator.add``, ``torch.sym_max``, ``math.trunc``).

Anything else is refused with one line; numbers are bounded so that sympy cannot be made to
build a huge integer (``Pow(Integer(10), Integer(10**9))``). The check was made against the
deserializer of torch 2.8 to 2.13.
"""

from __future__ import annotations

import ast
import json
import re

from ..errors import DissectError

#: Callables of sympy and of ``torch.utils._sympy.functions`` that serialised expressions use.
_FUNCTIONS = frozenset(
    """
    Symbol Dummy Integer Rational Float Add Mul Pow Mod Max Min Abs Sum floor ceiling sqrt
    Eq Ne Lt Le Gt Ge Equality Unequality StrictLessThan StrictGreaterThan LessThan GreaterThan
    And Or Not Xor BooleanTrue BooleanFalse Piecewise ExprCondPair ITE
    Infinity NegativeInfinity IntInfinity NegativeIntInfinity NaN Zero One NegativeOne Half
    FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift
    PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator
    TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity
    max min abs int float round
    """.split()
)
#: Functions generated per operation by torch (``OpaqueUnaryFn_sqrt``, ``BitwiseFn_bitwise_and``).
_GENERATED = re.compile(r"(OpaqueUnaryFn|BitwiseFn)_[a-z][a-z0-9_]{0,30}")
#: Bare names: sympy constants, and symbols as torch names them (``s0``, ``u3``, ``zuf0``).
_CONSTANTS = frozenset("oo zoo nan true false True False pi E".split())
_SYMBOL = re.compile(r"[a-z]{1,4}[0-9]{1,9}")
#: Keyword arguments torch writes (sympy assumptions, a Float's precision).
_KEYWORDS = frozenset(
    """
    positive negative nonnegative nonpositive integer real finite infinite zero nonzero
    even odd rational commutative extended_real precision evaluate
    """.split()
)
#: Functions that raise their first argument to a power or shift it: the exponent is bounded.
_POWERS = frozenset({"Pow", "PowByNatural", "FloatPow", "LShift"})
_STRING = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}|[-+]?[0-9][0-9.e+-]{0,40}")
_SIZE_METHODS = frozenset({"size", "stride", "storage_offset"})
_ALLOWED = (
    # structure
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Call,
    ast.keyword,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.Tuple,
    # operators
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Pow,
    ast.USub,
    ast.UAdd,
    ast.Not,
    ast.And,
    ast.Or,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
)
_MAX_TEXT = 100_000
_MAX_INT = 2**64
_MAX_EXPONENT = 64

#: Node targets that are not ``torch.ops`` operators: the symbolic functions torch serialises.
_PLAIN_TARGETS = frozenset(
    [
        f"_operator.{op}"
        for op in "eq ne le ge lt gt neg pos mul add sub floordiv mod pow truediv and_ or_ "
        "lshift rshift getitem not_ abs".split()
    ]
    + [f"math.{op}" for op in ("trunc", "floor", "ceil", "sqrt")]
    + [
        f"torch.{op}"
        for op in "sym_not sym_int sym_float sym_ite sym_max sym_min sym_sqrt sym_sum".split()
    ]
)
#: What shape guards call besides sizes (``math.trunc(1.5*torch.sym_float(L['x'].size()[2]))``).
_GUARD_FUNCTIONS = frozenset(target for target in _PLAIN_TARGETS if not target.startswith("_"))
_OPERATOR = re.compile(r"torch\.ops(\.[A-Za-z_][A-Za-z0-9_]{0,80}){2,3}")
_EXTENSION = re.compile(r"#[A-Za-z_][A-Za-z0-9_.:]{0,120}")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,80}(\.[A-Za-z_][A-Za-z0-9_]{0,80}){0,12}")
_HOW = (
    "torch would evaluate it as Python when reading the file, so dissect refuses it. Export the "
    "program again with torch.export.save, or give the model as file.py:callable with --weights."
)


def check_program(data: bytes, name: str) -> None:
    """Refuse a serialised exported program that holds a string torch would run as code.

    Parameters
    ----------
    data : bytes
        The archive's ``models/<name>.json``: the program torch's deserializer reads.
    name : str
        The model file, for messages.

    Raises
    ------
    DissectError
        Naming the first expression, guard or target outside the grammar ``torch.export.save``
        writes.
    """
    try:
        program = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise DissectError(
            f"MODEL {name!r} is not a readable torch.export archive (its program is not JSON "
            f"that dissect can read: {type(error).__name__}); save it again with "
            "torch.export.save."
        ) from error
    if not isinstance(program, dict):
        raise DissectError(f"MODEL {name!r}: its program is not a JSON object. {_HOW}")
    for key, bounds in (program.get("range_constraints") or {}).items():
        _check_expression(key, "range constraint", name, guard=False)
        for bound in (bounds or {}).values() if isinstance(bounds, dict) else [bounds]:
            if not isinstance(bound, (int, type(None))) or abs(bound or 0) > _MAX_INT:
                _refuse("range constraint", f"{key}: {bound}", name)
    for guard in program.get("guards_code") or []:
        _check_expression(guard, "shape guard", name, guard=True)
    _check_parts(program, name)


def _check_parts(program: dict, name: str) -> None:
    """Check every expression and node target anywhere in the program (walked without recursion)."""
    stack: list[object] = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        if "expr_str" in item:
            _check_expression(item["expr_str"], "symbolic size expression", name, guard=False)
        if "as_operator" in item:
            _check_target(item["as_operator"], name)
        if "target" in item and "inputs" in item:
            _check_target(item["target"], name)
            metadata = item.get("metadata") or {}
            for entry in str(metadata.get("source_fn_stack", "")).split(";"):
                target = entry.rpartition(",")[2]
                if entry and (not _DOTTED.fullmatch(target) or "__" in target):
                    _refuse("node's source function", target, name)
        stack.extend(item.values())


def _check_target(target: object, name: str) -> None:
    if not isinstance(target, str):
        _refuse("node target", target, name)
    plain = target in _PLAIN_TARGETS or _EXTENSION.fullmatch(target)
    if not plain and not (_OPERATOR.fullmatch(target) and "__" not in target):
        _refuse("node target", target, name)


def _check_expression(text: object, what: str, name: str, *, guard: bool) -> None:
    """Parse ``text`` with :mod:`ast` (no evaluation) and refuse anything outside the grammar."""
    if not isinstance(text, str) or len(text) > _MAX_TEXT:
        _refuse(what, text, name)
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        _refuse(what, text, name)
    for node in ast.walk(tree):
        if not _allowed(node, guard):
            _refuse(what, text, name)


def _allowed(node: ast.AST, guard: bool) -> bool:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, str):
            return bool(_STRING.fullmatch(value))
        return isinstance(value, (bool, float)) or (
            isinstance(value, int) and abs(value) <= _MAX_INT
        )
    if isinstance(node, ast.Name):
        named = _callable(node.id) or node.id in _CONSTANTS or bool(_SYMBOL.fullmatch(node.id))
        return named or (guard and node.id in ("L", "math", "torch"))
    if isinstance(node, ast.Call):
        return _call_allowed(node, guard)
    if isinstance(node, ast.keyword):
        return node.arg in _KEYWORDS
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _small_exponent(node.left, node.right)
    if guard and isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, (int, str))
    if guard and isinstance(node, ast.Attribute):
        qualified = f"{getattr(node.value, 'id', '')}.{node.attr}"
        return qualified in _GUARD_FUNCTIONS or (
            node.attr in _SIZE_METHODS and isinstance(node.value, (ast.Subscript, ast.Name))
        )
    return isinstance(node, _ALLOWED)


def _call_allowed(node: ast.Call, guard: bool) -> bool:
    function = node.func
    if isinstance(function, ast.Attribute):
        module = getattr(function.value, "id", "")
        qualified = f"{module}.{function.attr}"
        return guard and (function.attr in _SIZE_METHODS or qualified in _GUARD_FUNCTIONS)
    if not isinstance(function, ast.Name) or not _callable(function.id):
        return False
    if function.id in _POWERS:
        return len(node.args) == 2 and _small_exponent(node.args[0], node.args[1])
    return True


def _callable(identifier: str) -> bool:
    return identifier in _FUNCTIONS or bool(_GENERATED.fullmatch(identifier))


def _small_exponent(base: ast.AST, exponent: ast.AST) -> bool:
    """A power sympy can compute: a symbolic exponent, or a literal <= 64 over a power-free base.

    A constant exponent makes sympy compute the power at once; nested powers of literals would
    build an integer of gigabytes.
    """
    if _has_symbol(exponent):
        return True
    literal = exponent.operand if isinstance(exponent, ast.UnaryOp) else exponent
    if isinstance(literal, ast.Call) and getattr(literal.func, "id", "") in ("Integer", "Float"):
        literal = literal.args[0] if literal.args else literal
        literal = literal.operand if isinstance(literal, ast.UnaryOp) else literal
    value = getattr(literal, "value", None)
    try:
        small = abs(float(value)) <= _MAX_EXPONENT  # a Float's digits come as a string
    except (TypeError, ValueError, OverflowError):
        return False
    return isinstance(literal, ast.Constant) and small and not any(map(_is_power, ast.walk(base)))


def _has_symbol(node: ast.AST) -> bool:
    return any(
        (isinstance(part, ast.Name) and _SYMBOL.fullmatch(part.id))
        or (isinstance(part, ast.Call) and getattr(part.func, "id", "") == "Symbol")
        for part in ast.walk(node)
    )


def _is_power(node: ast.AST) -> bool:
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, ast.Pow)
    return isinstance(node, ast.Call) and getattr(node.func, "id", "") in _POWERS


def _refuse(what: str, text: object, name: str) -> None:
    shown = repr(text if not isinstance(text, str) else text[:80])
    raise DissectError(f"MODEL {name!r} holds a {what} dissect does not accept ({shown}); {_HOW}")
