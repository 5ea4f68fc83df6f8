"""The shape of the package: small modules, no import cycles, a light import and CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dissect"
HEAVY = ("torch", "matplotlib", "scipy", "pandas", "skimage", "numpy", "PIL")
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports, anywhere but under ``if TYPE_CHECKING:``."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(inner)
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in modules and module != name}


def test_no_module_is_long():
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_import_cycles():
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: _imports(path, set(paths)) for name, path in paths.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return False

    cycles = sorted(
        (name, other) for name in graph for other in graph[name] if reaches(other, name)
    )
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"


@pytest.mark.parametrize(
    "code",
    [
        "import dissect",
        "import dissect.cli as c; c.build_parser()",
        "import dissect; dissect.__all__; dissect.DissectError",
    ],
)
def test_import_and_help_load_nothing_heavy(code):
    check = f"{code}; import sys; print(sorted({{m.split('.')[0] for m in sys.modules}}))"
    loaded = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    ).stdout
    heavy = [name for name in HEAVY if f"'{name}'" in loaded]
    assert not heavy, f"{code!r} loaded {heavy}"


def test_public_api_resolves_lazily():
    import dissect

    for name in dissect.__all__:
        assert getattr(dissect, name) is not None
    assert dissect.plots.semantics.plot_type_distribution
    with pytest.raises(AttributeError):
        dissect.no_such_name  # noqa: B018


MAX_FUNCTION_LINES = 80  # not counting the docstring
MAX_PARAMETERS = 8  # not counting self, cls, *args and **kwargs


def test_no_function_is_long_or_takes_many_parameters():
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if "commands" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            count = len([a for a in arguments if a.arg not in ("self", "cls")])
            lines = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                lines -= first.end_lineno - first.lineno + 1
            if lines > MAX_FUNCTION_LINES or count > MAX_PARAMETERS:
                found.add(f"{path.relative_to(PACKAGE).as_posix()}:{node.name}")
    assert not found, f"long or many-parameter functions: {sorted(found)}"


def test_no_private_name_is_imported_across_modules():
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:  # the package's own modules
                names = [alias.name for alias in node.names]
                private = [n for n in names if n.startswith("_") and not n.endswith("__")]
                if private:
                    found.append(f"{path.relative_to(PACKAGE).as_posix()}: {private}")
    assert not found, f"private names imported from other modules: {found}"


def test_package_faces_only_re_export():
    for path in PACKAGE.rglob("__init__.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative not in STAGE_FACES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        kinds = ast.FunctionDef | ast.ClassDef
        defined = [node.name for node in tree.body if isinstance(node, kinds)]
        assert not defined, f"{relative} defines {defined}: keep it in a named module"


#: Stage packages whose face only re-exports (geometry/ and models/ are split on other branches).
STAGE_FACES = ("iou/__init__.py", "rf/__init__.py", "segment/__init__.py")
