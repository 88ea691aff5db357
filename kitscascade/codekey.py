"""Code keys: a hash of the package code a workflow job actually runs, found by following imports.

Snakemake reruns a job when its ``params`` change, but it does not look into
the modules a ``script:`` imports. Every rule that runs an adapter therefore
gets ``params.code = code_key(adapter)`` (added in the ``Snakefile`` to every
rule with a ``script:``; nobody lists modules by hand).

The key covers the *top-level definitions* (functions, classes, constants)
of ``kitscascade`` that the adapter reaches: the names it imports from the
package, then every package name those definitions refer to, transitively,
across modules and through imports inside function bodies, plus the code
that runs when a reached module is imported (module-level statements other
than definitions, and definitions with decorators that may register them).
Editing a plot function changes the key of the plot rules only; editing the
loss changes the key of the training rules, and Snakemake reruns what
depends on their outputs.

What is hashed is the token stream of each definition without comments,
docstrings, blank lines and indentation width, so re-indenting, commenting
or rewording a docstring reruns nothing; any other edit, quotes or line
breaks inside a statement included, does. Followed conservatively (the whole
module counts): a module used as an object (``getattr(io, name)``, passed as
an argument) and ``from kitscascade.x import *``. Not followed: names built
at run time (a registry filled from strings), third-party code (its versions
are in ``provenance.json``), and the adapter script itself (Snakemake reruns
a job whose script file is newer than its outputs). Python 3.12 tokenizes
f-strings differently from 3.11, so a new Python minor version may change
every key once.
"""

from __future__ import annotations

import ast
import hashlib
import io as _io
import tokenize
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PACKAGE = "kitscascade"
PACKAGE_DIR = Path(__file__).resolve().parent

Symbol = tuple[str, str]  # (module, top-level name)
IMPORT_TIME = "<import>"  # the name under which a module's import-time statements are kept
WHOLE_MODULE = "<all>"  # a reference to a module as an object: all of its definitions
# Decorators known not to register the function anywhere: a definition decorated only with these is
# code like any other; one with any other decorator (``@dispatch.register(int)``) also runs on import.
PURE_DECORATORS = {"dataclass", "contextmanager", "lru_cache", "cache", "cached_property", "total_ordering", "wraps",
                   "property", "staticmethod", "classmethod", "abstractmethod"}


@dataclass
class _Module:
    name: str
    source: str
    is_package: bool
    definitions: dict[str, list[ast.stmt]] = field(default_factory=dict)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # alias -> (module, attribute)
    star_imports: list[str] = field(default_factory=list)  # `from kitscascade.x import *`: modules


def _package_module(name: str, package_dir: Path) -> Path | None:
    """The source file of package module ``name`` (``kitscascade.x``), or None if it is not one."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    path = package_dir.joinpath(*parts[1:])
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    path = path.with_suffix(".py")
    return path if path.exists() else None


def _import_aliases(node: ast.AST, module: _Module, package_dir: Path) -> dict[str, tuple[str, str | None]]:
    """Package names bound by one import statement: alias -> (module, attribute or None).

    A star import binds the alias ``*`` (its module is used as a whole).
    """
    aliases = {}
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE:
                aliases[alias.asname or PACKAGE] = (alias.name if alias.asname else PACKAGE, None)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolve against the package this module is in (or is)
            anchor = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        if base.split(".")[0] != PACKAGE:
            return aliases
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if alias.name == "*":
                aliases["*"] = (base, None)
            elif _package_module(submodule, package_dir) is not None:
                aliases[alias.asname or alias.name] = (submodule, None)
            else:
                aliases[alias.asname or alias.name] = (base, alias.name)
    return aliases


def _registers(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    """Whether a definition has a decorator that may do more than wrap it (see ``PURE_DECORATORS``)."""
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Call):
            decorator = decorator.func
        name = decorator.attr if isinstance(decorator, ast.Attribute) else getattr(decorator, "id", None)
        if name not in PURE_DECORATORS:
            return True
    return False


def _bound_names(target: ast.expr) -> list[str] | None:
    """The plain names an assignment target binds, or None if it also writes elsewhere (``a.b = ``, ``a[k] = ``)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    if isinstance(target, ast.Tuple | ast.List):
        names = [_bound_names(t) for t in target.elts]
        return None if any(n is None for n in names) else [n for sub in names for n in sub]
    return None


def _parse(name: str, package_dir: Path) -> _Module:
    path = _package_module(name, package_dir)
    if path is None:  # e.g. a compiled extension: nothing to read
        return _Module(name, "", False)
    return _parse_source(name, path.read_text(), path.name == "__init__.py", package_dir)


@lru_cache(maxsize=None)
def _parse_source(name: str, source: str, is_package: bool, package_dir: Path) -> _Module:
    module = _Module(name, source, is_package)

    def define(names, node):
        for target in names:
            module.definitions.setdefault(target, []).append(node)

    for node in ast.parse(source).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            aliases = _import_aliases(node, module, package_dir)
            if "*" in aliases:
                module.star_imports.append(aliases.pop("*")[0])
            module.imports.update(aliases)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # the module docstring
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            define([node.name, IMPORT_TIME] if _registers(node) else [node.name], node)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [_bound_names(t) for t in targets]
            define([IMPORT_TIME] if any(n is None for n in names) else [n for sub in names for n in sub], node)
        else:  # if/try/for/with blocks and calls run on import; names defined or imported inside count too
            names = [IMPORT_TIME]
            for sub in ast.walk(node):
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.append(sub.name)
                elif isinstance(sub, ast.Assign | ast.AnnAssign | ast.AugAssign):
                    for target in sub.targets if isinstance(sub, ast.Assign) else [sub.target]:
                        names += _bound_names(target) or []
                elif isinstance(sub, ast.Import | ast.ImportFrom):
                    aliases = _import_aliases(sub, module, package_dir)
                    aliases.pop("*", None)
                    module.imports.update(aliases)
            define(names, node)
    return module


def _references(nodes: list[ast.AST], module: _Module, package_dir: Path) -> set[Symbol]:
    """Package symbols the statements ``nodes`` refer to (module-level and local imports alike)."""
    aliases = dict(module.imports)
    for node in nodes:
        for sub in ast.walk(node):
            aliases.update(_import_aliases(sub, module, package_dir))
    found: set[Symbol] = set()
    if "*" in aliases:
        found.add((aliases.pop("*")[0], WHOLE_MODULE))
    handled: set[int] = set()  # the `io` of `io.save_json`, already resolved to one name
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id in aliases:
                target, attribute = aliases[sub.value.id]
                if attribute is None:
                    found.add((target, sub.attr))
                    handled.add(id(sub.value))
            elif isinstance(sub, ast.Name) and id(sub) not in handled:
                if sub.id in aliases:
                    target, attribute = aliases[sub.id]
                    found.add((target, attribute or WHOLE_MODULE))
                elif sub.id in module.definitions:
                    found.add((module.name, sub.id))
    return found


def _closure(start: set[Symbol], package_dir: Path) -> set[Symbol]:
    """Every package definition reachable from ``start``, with the import-time code of every module reached."""
    seen: set[Symbol] = set()
    reached: set[str] = set()
    todo = list(start)
    while todo:
        module_name, name = todo.pop()
        module = _parse(module_name, package_dir)
        if module_name not in reached:  # importing it runs its import-time code, and that of what it imports
            reached.add(module_name)
            todo.append((module_name, IMPORT_TIME))
            todo += [(target, IMPORT_TIME) for target, _ in module.imports.values()]
            todo += [(target, WHOLE_MODULE) for target in module.star_imports]
            if "." in module_name:
                todo.append((module_name.rsplit(".", 1)[0], IMPORT_TIME))  # the package's __init__
        if (module_name, name) in seen:
            continue
        if name == WHOLE_MODULE:
            todo += [(module_name, n) for n in module.definitions]
        elif name in module.definitions:
            seen.add((module_name, name))
            todo += _references(module.definitions[name], module, package_dir)
        elif name in module.imports:  # re-exported: `from kitscascade.x import f` in this module
            target, attribute = module.imports[name]
            todo.append((target, attribute or WHOLE_MODULE))
        elif _package_module(f"{module_name}.{name}", package_dir) is not None:  # `kitscascade.io.f`
            todo.append((f"{module_name}.{name}", WHOLE_MODULE))
    return seen


def _docstring_starts(nodes: list[ast.AST]) -> set[tuple[int, int]]:
    starts = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and sub.body:
                first = sub.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                        and isinstance(first.value.value, str):
                    starts.add((first.lineno, first.col_offset))
    return starts


def _tokens(module: _Module, nodes: list[ast.stmt]) -> str:
    """The statements' tokens, without comments, docstrings, blank lines and spacing."""
    lines = _io.StringIO(module.source).readlines()  # the parser's lines: "\n" only, unlike str.splitlines
    skip = _docstring_starts(nodes)
    out = []
    for node in nodes:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        segment = "".join(lines[first - 1 : node.end_lineno])
        for tok in tokenize.generate_tokens(_io.StringIO(segment).readline):
            position = (tok.start[0] + first - 1, tok.start[1])
            if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER):
                continue
            if tok.type == tokenize.STRING and position in skip:
                continue
            out.append({tokenize.INDENT: "<in>", tokenize.DEDENT: "<de>", tokenize.NEWLINE: ";"}.get(tok.type, tok.string))
    return " ".join(out)


def script_symbols(script, package_dir: Path = PACKAGE_DIR) -> set[Symbol]:
    """The package symbols a script (a workflow adapter) imports or refers to."""
    tree = ast.parse(Path(script).read_text())
    pseudo = _Module("__script__", "", False)
    found = _references([tree], pseudo, Path(package_dir))
    for node in ast.walk(tree):  # a script imports what it runs: every imported name counts
        for target, attribute in _import_aliases(node, pseudo, Path(package_dir)).values():
            found.add((target, attribute or IMPORT_TIME))
    return found


def used_symbols(script, package_dir: Path = PACKAGE_DIR) -> set[Symbol]:
    """Every package definition (module, top-level name) that running ``script`` can reach."""
    return _closure(script_symbols(script, package_dir), Path(package_dir))


def code_key(script, package_dir: Path = PACKAGE_DIR) -> str:
    """A 12-hex-digit hash of the package code ``script`` reaches (see the module docstring)."""
    package_dir = Path(package_dir).resolve()
    digest = hashlib.sha1()
    for module_name, name in sorted(used_symbols(script, package_dir)):
        module = _parse(module_name, package_dir)
        digest.update(f"{module_name}:{name}\n{_tokens(module, module.definitions[name])}\n".encode())
    return digest.hexdigest()[:12]
