"""Code keys: a hash of the package code a workflow job actually runs, found by following imports.

Snakemake reruns a job when its ``params`` change, but it does not look into
the modules a ``script:`` imports. Every rule that runs an adapter therefore
gets ``params.code = code_key(adapter)`` (added in the ``Snakefile`` to every
rule with a ``script:``; nobody lists modules by hand).

The key covers the *top-level definitions* (functions, classes, constants)
of ``kitscascade`` that the adapter reaches: the names it imports from the
package, then every package name those definitions refer to, transitively,
across modules and through imports inside function bodies. Editing a plot
function changes the key of the plot rules only; editing the loss changes
the key of the training rules, and Snakemake reruns what depends on their
outputs.

What is hashed is the token stream of each definition without comments,
docstrings and whitespace, so reformatting or rewording a docstring reruns
nothing. Limits, by construction: a name reached only dynamically
(``getattr(module, name)``, a string looked up in a registry built at run
time) is not followed, and neither is third-party code (its versions are in
``provenance.json``).
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
IMPORT_TIME = "<import>"
WHOLE_MODULE = "<all>"  # a module used as an object (passed around, not `module.name`): all of it  # the name of a module's other top-level statements (they run on import)


@dataclass
class _Module:
    name: str
    source: str
    definitions: dict[str, list[ast.stmt]] = field(default_factory=dict)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # alias -> (module, attribute)


def _package_module(name: str, package_dir: Path) -> Path | None:
    """The source file of package module ``name`` (``kitscascade.x``), or None if it is not one."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    path = package_dir.joinpath(*parts[1:])
    if path.is_dir():
        return path / "__init__.py"
    path = path.with_suffix(".py")
    return path if path.exists() else None


def _import_aliases(node: ast.AST, module: str, package_dir: Path) -> dict[str, tuple[str, str | None]]:
    """Package names bound by one import statement: alias -> (module, attribute or None)."""
    aliases = {}
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE:
                aliases[alias.asname or alias.name.split(".")[0]] = (alias.name if alias.asname else PACKAGE, None)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            anchor = module.split(".")[: -node.level]
            base = ".".join([*anchor, base] if base else anchor)
        if base.split(".")[0] != PACKAGE:
            return aliases
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if _package_module(submodule, package_dir) is not None:
                aliases[alias.asname or alias.name] = (submodule, None)
            else:
                aliases[alias.asname or alias.name] = (base, alias.name)
    return aliases


def _parse(name: str, package_dir: Path) -> _Module:
    return _parse_source(name, _package_module(name, package_dir).read_text(), package_dir)


@lru_cache(maxsize=None)
def _parse_source(name: str, source: str, package_dir: Path) -> _Module:
    module = _Module(name, source)
    for node in ast.parse(source).body:
        module.imports.update(_import_aliases(node, name, package_dir))
        targets: list[str] = []
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            targets = [node.name]
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                targets += [n.id for n in ast.walk(target) if isinstance(n, ast.Name)]
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # the module docstring
        elif not isinstance(node, ast.Import | ast.ImportFrom):
            targets = [IMPORT_TIME]  # matplotlib.use(...), if-blocks: they run on import
        for target in targets:
            module.definitions.setdefault(target, []).append(node)
    return module


def _references(nodes: list[ast.AST], module: _Module, package_dir: Path) -> set[Symbol]:
    """Package symbols the statements ``nodes`` refer to (module-level and local imports alike)."""
    aliases = dict(module.imports)
    for node in nodes:
        for sub in ast.walk(node):
            aliases.update(_import_aliases(sub, module.name, package_dir))
    found: set[Symbol] = set()
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
    """Every package definition reachable from ``start``."""
    seen: set[Symbol] = set()
    todo = list(start)
    while todo:
        symbol = todo.pop()
        if symbol in seen:
            continue
        module = _parse(symbol[0], package_dir)
        name = symbol[1]
        if name == WHOLE_MODULE:
            todo += [(module.name, n) for n in module.definitions]
            continue
        if name not in module.definitions:
            if name in module.imports:  # re-exported: `from kitscascade.x import f` in this module
                target, attribute = module.imports[name]
                todo.append((target, attribute or WHOLE_MODULE))
            continue  # not a package definition (e.g. a submodule attribute set at run time)
        seen.add(symbol)
        todo += _references(module.definitions[name], module, package_dir)
        if IMPORT_TIME in module.definitions:
            todo.append((module.name, IMPORT_TIME))  # they run whenever the module is imported
    return seen


def _docstring_starts(nodes: list[ast.AST]) -> set[tuple[int, int]]:
    starts = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module) and sub.body:
                first = sub.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                        and isinstance(first.value.value, str):
                    starts.add((first.lineno, first.col_offset))
    return starts


def _tokens(module: _Module, nodes: list[ast.stmt]) -> str:
    """The statements' tokens, without comments, docstrings, blank lines and spacing."""
    lines = module.source.splitlines(keepends=True)
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
    """The package symbols a script (a workflow adapter) refers to."""
    tree = ast.parse(Path(script).read_text())
    pseudo = _Module("__script__", "")
    for node in tree.body:
        pseudo.imports.update(_import_aliases(node, "__script__", package_dir))
    return _references([tree], pseudo, package_dir)


def used_symbols(script, package_dir: Path = PACKAGE_DIR) -> set[Symbol]:
    """Every package symbol (module, top-level name) that running ``script`` can reach."""
    return _closure(script_symbols(script, package_dir), Path(package_dir))


def code_key(script, package_dir: Path = PACKAGE_DIR) -> str:
    """A 12-hex-digit hash of the package code ``script`` reaches (see the module docstring)."""
    package_dir = Path(package_dir).resolve()
    digest = hashlib.sha1()
    for module_name, name in sorted(used_symbols(script, package_dir)):
        module = _parse(module_name, package_dir)
        digest.update(f"{module_name}:{name}\n{_tokens(module, module.definitions[name])}\n".encode())
    return digest.hexdigest()[:12]
