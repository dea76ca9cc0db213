"""The shape of the package (CONVENTIONS.md §12–14, DESIGN.md §1), checked so it cannot drift:
the import-linter contracts name every registered kind, no private name (``_x``) is
imported across modules, and names imported only for type checking are imported where they run.
``lint-imports`` itself runs in ``make test``."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from distml.registry import KINDS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "distml"


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c for c in config["contracts"]}


def test_the_registry_contract_forbids_every_kind_module():
    """tune, predict, report, runtime and the front doors may not import any kind module:
    the forbidden list is exactly the registry's modules (a new kind is covered at once)."""
    forbidden = set(_contracts()["kinds-through-registry"]["forbidden_modules"])
    assert forbidden == set(KINDS.values()), (
        "pyproject.toml [tool.importlinter] kinds-through-registry must list every registered "
        f"kind module: add {sorted(set(KINDS.values()) - forbidden)}, drop "
        f"{sorted(forbidden - set(KINDS.values()))}"
    )


def test_the_layers_contract_covers_every_top_level_module():
    layers = _contracts()["layers"]["layers"]
    named = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    modules = {
        f"distml.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")
    } | {f"distml.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert modules <= named, f"modules in no layer: {sorted(modules - named)}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    base = ROOT / dotted.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_no_private_name_is_imported_across_modules():
    """``from distml.x import _y`` only where ``_y`` is a private submodule of the importer's
    own package; a private function or constant stays in its module."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and node.module
                and node.module.split(".")[0] == "distml"
            ):
                continue
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__"):
                    continue
                target = f"{node.module}.{name}"
                if _is_module(target) and (
                    here == node.module or here.startswith(node.module + ".")
                ):
                    continue
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target}")
    assert not found, "private names imported across modules:\n" + "\n".join(found)


#: the most lines a module may have (ruff-formatted code, about 450 lines of the compact style
#: the code had before ruff format; CONVENTIONS.md §11 asks for "mostly under 400")
MAX_MODULE_LINES = 600


def test_no_module_is_too_long_to_read():
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them): {long}"


def _imported(node) -> set[str]:
    return {(a.asname or a.name.split(".")[0]) for a in node.names}


def _type_checking_only(tree: ast.Module) -> set[str]:
    """Names a module imports only under ``if TYPE_CHECKING:`` (numpy, pandas, ...)."""
    guarded, plain = set(), set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for n in ast.walk(node):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    guarded |= _imported(n)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            plain |= _imported(node)
    return guarded - plain


def _annotation_ids(fn) -> set[int]:
    args = fn.args
    nodes = [a.annotation for a in args.args + args.kwonlyargs + args.posonlyargs]
    nodes += [a.annotation for a in (args.vararg, args.kwarg) if a is not None]
    nodes.append(fn.returns)
    return {id(m) for n in nodes if n is not None for m in ast.walk(n)}


def _runtime_uses(fn, names: set[str], available: set[str], where: str) -> list[str]:
    """Uses of ``names`` in ``fn`` (not in annotations) that no import in it or an enclosing
    function provides; nested functions see their enclosing functions' imports."""
    local = set(available)
    skip: set[int] = set(_annotation_ids(fn))
    nested = []
    for n in ast.walk(fn):
        if n is not fn and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if not isinstance(n, ast.Lambda):
                nested.append(n)
                skip |= {id(m) for m in ast.walk(n)}
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            local |= _imported(n)
        elif isinstance(n, ast.AnnAssign):
            skip |= {id(m) for m in ast.walk(n.annotation)}
    bad = [
        f"{where}:{n.lineno}: {n.id} in {fn.name}()"
        for n in ast.walk(fn)
        if isinstance(n, ast.Name)
        and isinstance(n.ctx, ast.Load)
        and n.id in names
        and n.id not in local
        and id(n) not in skip
    ]
    for inner in nested:
        bad += _runtime_uses(inner, names, local, where)
    return bad


def test_names_imported_for_type_checking_only_are_imported_where_they_run():
    """Heavy modules (numpy, pandas) are imported inside the functions that use them, so that
    ``distml validate`` stays light (tests/unit/test_cold_path.py); a function that uses ``np``
    or ``pd`` at run time with only the module's ``if TYPE_CHECKING:`` import fails in a Ray
    worker with a NameError that no lint catches (F821 sees the guarded import)."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = _type_checking_only(tree)
        if not names:
            continue
        where = str(path.relative_to(ROOT))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                bad += _runtime_uses(node, names, set(), where)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        bad += _runtime_uses(item, names, set(), where)
    assert not bad, "used at run time without an import in the function:\n" + "\n".join(bad)
