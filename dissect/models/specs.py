"""MODEL specs that name a factory: ``file.py:build``, ``package.module:build``, with arguments.

A factory may take arguments written after it as Python literals, ``file.py:build(width=64)`` or
``torchvision:resnet18(num_classes=365)``: they are read with :func:`ast.literal_eval` (numbers,
strings, booleans, None, tuples, lists, dicts, sets), never evaluated as code, and anything else
(a name, a call, an attribute) is refused with one line.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import DissectError


@dataclass(frozen=True)
class FactoryCall:
    """A spec split into what to call and the literal arguments to call it with.

    Attributes
    ----------
    target : str
        Everything before the arguments: ``file.py:build``, ``torchvision:resnet18``.
    args : tuple
        Positional arguments.
    kwargs : dict
        Keyword arguments.
    """

    target: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """The arguments as a call would show them: ``(num_classes=365)``, or empty."""
        parts = [repr(value) for value in self.args]
        parts += [f"{name}={value!r}" for name, value in self.kwargs.items()]
        return f"({', '.join(parts)})" if parts else ""


def parse_call(spec: str) -> FactoryCall:
    """Split ``target(arguments)`` and read the arguments as literals.

    Parameters
    ----------
    spec : str
        A MODEL spec, with or without ``(...)`` at its end.

    Returns
    -------
    FactoryCall

    Raises
    ------
    DissectError
        If the parentheses do not close at the end, or an argument is not a literal.

    Examples
    --------
    >>> parse_call("torchvision:resnet18(num_classes=365)").kwargs
    {'num_classes': 365}
    """
    if "(" not in spec:
        return FactoryCall(spec)
    target, _, rest = spec.partition("(")
    if not spec.endswith(")"):
        raise DissectError(
            f"MODEL {spec!r}: arguments go in parentheses at the end, like "
            "torchvision:resnet18(num_classes=365)."
        )
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
    except SyntaxError as error:
        raise DissectError(
            f"MODEL {spec!r}: the arguments are not valid Python syntax ({error.msg}); write "
            "them like (num_classes=365, width=64)."
        ) from error
    if not isinstance(call, ast.Call) or any(keyword.arg is None for keyword in call.keywords):
        raise DissectError(f"MODEL {spec!r}: write the arguments like (num_classes=365).")
    args = tuple(_literal(spec, node) for node in call.args)
    kwargs = {keyword.arg: _literal(spec, keyword.value) for keyword in call.keywords}
    return FactoryCall(target, args, kwargs)


def _literal(spec: str, node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as error:
        raise DissectError(
            f"MODEL {spec!r}: argument {ast.unparse(node)!r} is not a literal (a number, string, "
            "True/False/None, or a tuple, list or dict of them); dissect never evaluates code "
            "from a spec. Write the value itself, or build the model in a file.py:callable."
        ) from error


def call_factory(spec: str) -> nn.Module:
    """Import ``file.py:name`` or ``package.module:name`` and call it with the spec's literals.

    Raises
    ------
    DissectError
        One line naming what failed: the file, the import, the name, the call or its result.
    """
    call = parse_call(spec)
    target, _, name = call.target.rpartition(":")
    if not name.isidentifier():
        raise DissectError(f"MODEL {spec!r}: {name!r} after ':' is not a Python name.")
    module = _import_file(spec, target) if target.endswith(".py") else _import(spec, target)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise DissectError(f"MODEL {spec!r}: {target!r} has no callable named {name!r}.")
    try:
        model = factory(*call.args, **call.kwargs)
    except Exception as error:  # noqa: BLE001 - whatever the user's factory raises
        raise DissectError(
            f"MODEL {spec!r}: {name}{call.describe() or '()'} failed with {where(error)}; fix "
            "the factory or its arguments."
        ) from error
    if not isinstance(model, nn.Module):
        raise DissectError(
            f"MODEL {spec!r}: {name}() returned {type(model).__name__}, not a torch nn.Module."
        )
    return model


def _import_file(spec: str, target: str) -> object:
    file = Path(target)
    if not file.is_file():
        raise DissectError(f"MODEL {spec!r}: file {target!r} does not exist.")
    module_name = f"_dissect_user_model_{abs(hash(file.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - whatever the user's file raises
        del sys.modules[module_name]
        raise DissectError(
            f"MODEL {spec!r}: running {target!r} failed with {where(error)}; fix the file "
            "(python FILE shows the whole traceback)."
        ) from error
    return module


def _import(spec: str, target: str) -> object:
    try:
        return importlib.import_module(target)
    except ImportError as error:
        raise DissectError(
            f"MODEL {spec!r}: cannot import {target!r} ({error}). Check the module path, "
            "or give a file: path/to/file.py:callable."
        ) from error
    except Exception as error:  # noqa: BLE001 - whatever the user's module raises
        raise DissectError(
            f"MODEL {spec!r}: importing {target!r} failed with {where(error)}; fix the "
            f"module (python -c 'import {target}' shows the whole traceback)."
        ) from error


def where(error: BaseException) -> str:
    """``Type: message (file:line)`` of an exception, on one line."""
    text = (str(error).strip().splitlines() or [""])[0]
    frames = traceback.extract_tb(error.__traceback__)
    place = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {text}{place}"
