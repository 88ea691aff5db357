"""Code keys follow the package code a script reaches, and only that (kitscascade/codekey.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kitscascade import codekey

ROOT = Path(__file__).resolve().parents[1]

PACKAGE = {
    "__init__.py": '"""The package."""\nfrom .util import shout\n__version__ = "1"\n',
    "util.py": '''
        """Helpers."""
        import functools

        SCALE = 2


        def shout(text):
            """Upper case."""
            return text.upper()  # loud


        def double(x):
            return SCALE * x


        @functools.lru_cache
        def cached(x):
            return x


        def unused():
            return 0
    ''',
    "plots.py": '''
        from kitscascade import util


        def plot(x):
            return util.double(x)
    ''',
    "loss.py": '''
        def loss(x):
            return x
    ''',
    "train.py": '''
        from kitscascade.loss import loss
        from kitscascade import util as helpers


        def fit(x):
            from kitscascade.plots import plot  # a lazy import in a body
            return loss(x) + helpers.cached(x) + plot(x)
    ''',
    "registry.py": '''
        HANDLERS = {}


        def register(f):
            HANDLERS[f.__name__] = f
            return f


        @register
        def handler(x):
            return x
    ''',
    "optional.py": '''
        try:
            from kitscascade.fast import speedy
        except ImportError:
            from kitscascade.loss import loss as speedy

        if True:
            def conditional(x):
                return speedy(x)
    ''',
    "star.py": '''
        from kitscascade.loss import *


        def uses_star(x):
            return loss(x)
    ''',
    "sub/__init__.py": "from .inner import deep\n",
    "sub/inner.py": "def deep(x):\n    return x\n",
}


@pytest.fixture
def package(tmp_path):
    root = tmp_path / "kitscascade"
    for name, text in PACKAGE.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def script(tmp_path, text: str) -> Path:
    path = tmp_path / "adapter.py"
    path.write_text(textwrap.dedent(text))
    return path


def edit(package: Path, module: str, old: str, new: str) -> None:
    path = package / module
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def names(symbols) -> set[str]:
    return {f"{m.removeprefix('kitscascade.')}.{n}" for m, n in symbols}


def test_follows_names_modules_and_lazy_imports(tmp_path, package):
    fit = script(tmp_path, "from kitscascade import train\ntrain.fit(1)\n")
    assert names(codekey.used_symbols(fit, package)) == {
        "train.fit", "loss.loss", "util.cached", "plots.plot", "util.double", "util.SCALE"}


def test_a_change_reaches_exactly_the_scripts_that_use_it(tmp_path, package):
    fit = script(tmp_path, "from kitscascade import train\ntrain.fit(1)\n")
    plot = tmp_path / "plot.py"
    plot.write_text("from kitscascade.plots import plot\nplot(1)\n")
    keys = {s: codekey.code_key(s, package) for s in (fit, plot)}
    edit(package, "loss.py", "return x", "return x + 1")
    assert codekey.code_key(fit, package) != keys[fit] and codekey.code_key(plot, package) == keys[plot]
    keys = {s: codekey.code_key(s, package) for s in (fit, plot)}
    edit(package, "util.py", "SCALE = 2", "SCALE = 3")  # a constant both reach through util.double
    assert all(codekey.code_key(s, package) != keys[s] for s in (fit, plot))
    keys = {s: codekey.code_key(s, package) for s in (fit, plot)}
    edit(package, "util.py", "return 0", "return 1")  # nobody uses unused()
    assert all(codekey.code_key(s, package) == keys[s] for s in (fit, plot))


def test_comments_docstrings_and_indentation_do_not_count(tmp_path, package):
    shout = script(tmp_path, "from kitscascade.util import shout\n")
    key = codekey.code_key(shout, package)
    edit(package, "util.py", '"""Upper case."""', '"""Upper-cases text (reworded)."""')
    edit(package, "util.py", "# loud", "# very loud")
    edit(package, "util.py", "    return text.upper()", "    return   text.upper( )")
    assert codekey.code_key(shout, package) == key
    edit(package, "util.py", "text.upper( )", "text.lower( )")
    assert codekey.code_key(shout, package) != key


@pytest.mark.parametrize("text, symbol", [
    ("import kitscascade.loss\nkitscascade.loss.loss(1)\n", "loss.loss"),
    ("import kitscascade\nkitscascade.loss.loss(1)\n", "loss.loss"),
    ("from kitscascade import shout\n", "util.shout"),  # re-exported by a relative import in __init__
    ("from kitscascade.sub import deep\n", "sub.inner.deep"),  # the same one level down
    ("from kitscascade.star import uses_star\n", "loss.loss"),  # a star import: its module as a whole
    ("from kitscascade.optional import conditional\n", "loss.loss"),  # defined and imported in blocks
])
def test_imports_of_every_form_are_followed(tmp_path, package, text, symbol):
    assert symbol in names(codekey.used_symbols(script(tmp_path, text), package))


def test_code_registered_by_a_decorator_counts(tmp_path, package):
    handlers = script(tmp_path, "from kitscascade.registry import HANDLERS\n")
    key = codekey.code_key(handlers, package)
    edit(package, "registry.py", "    return x", "    return -x")
    assert codekey.code_key(handlers, package) != key


def test_a_module_without_source_does_not_break_the_key(tmp_path, package):
    # kitscascade.fast does not exist (as if it were a compiled extension); optional.py tries it
    key = codekey.code_key(script(tmp_path, "from kitscascade.optional import conditional\n"), package)
    assert len(key) == 12


def test_a_form_feed_in_a_comment_is_read_like_python_reads_it(tmp_path, package):
    edit(package, "loss.py", "def loss(x):", "# section\x0c\ndef loss(x):")
    assert "loss.loss" in names(codekey.used_symbols(script(tmp_path, "from kitscascade.loss import loss\n"), package))
    codekey.code_key(script(tmp_path, "from kitscascade.loss import loss\n"), package)


def test_the_workflow_adapters_depend_on_their_own_phase():
    """The real package: plots do not reach training code, training does not reach the plots."""
    def modules(adapter):
        return {m for m, _ in codekey.used_symbols(ROOT / "workflow_scripts" / adapter)}

    assert "kitscascade.losses" in modules("train_stage2.py") and "kitscascade.plots" not in modules("train_stage2.py")
    assert not {"kitscascade.losses", "kitscascade.train", "kitscascade.networks"} & modules("plot_evaluation.py")
    assert "kitscascade.losses" not in modules("predict_stage2.py")
    assert not {"kitscascade.data", "kitscascade.train"} & modules("preprocess_stage1.py")
