"""The source layout the package keeps: small modules, no silent broad excepts, no tools inside."""
import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 400


def _sources(*folders):
    for folder in folders:
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py"):
                    yield os.path.join(base, f)


def test_no_module_over_the_limit():
    long = {os.path.relpath(p, ROOT): n for p in _sources("nuwa_fast", "kernels")
            if (n := sum(1 for _ in open(p, encoding="utf-8"))) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_broad_except_reraises_or_reports():
    """An `except Exception` must re-raise, or record the error where the caller sees it (a list it
    appends to, a message it prints) and say so in a comment on the line."""
    bad = []
    for path in _sources("nuwa_fast", "kernels"):
        src = open(path, encoding="utf-8").read()
        lines = src.splitlines()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Name) and \
                    node.type.id in ("Exception", "BaseException"):
                body = ast.unparse(ast.Module(node.body, []))
                reraises = re.search(r"\braise\b", body)
                reports = re.search(r"\.append\(|print\(", body) and "#" in lines[node.lineno - 1]
                if not (reraises or reports):
                    bad.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not bad, f"broad excepts that neither re-raise nor report (with a comment saying so): {bad}"


def test_the_package_holds_no_harness():
    """Benchmarks and profilers live in benchmarks/; nothing in nuwa_fast/ derives a path to write from
    its own location."""
    assert not os.path.exists(os.path.join(ROOT, "nuwa_fast", "bench.py"))
    assert not os.path.exists(os.path.join(ROOT, "nuwa_fast", "profile.py"))
    for path in _sources("nuwa_fast"):
        src = open(path, encoding="utf-8").read()
        assert not re.search(r"dirname\(.*__file__.*\).*\n.*(results|out)\b", src), path


def test_checkout_shadows_no_installed_package():
    """kernels/ at the top of the checkout is not a regular package: started from the checkout
    (`python -m nuwa_fast`, `python -m pytest`), `import kernels` must reach Hugging Face's `kernels`
    (which transformers imports), or nothing, never our Triton files."""
    import subprocess
    import sys
    code = ("import importlib.util as u; s = u.find_spec('kernels'); "
            "print(s.origin if s is not None and s.origin else '')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    ours = os.path.join(ROOT, "kernels")
    assert not (out and os.path.realpath(out).startswith(os.path.realpath(ours) + os.sep)), \
        f"`import kernels` from the checkout resolves to {out}"
    assert not os.path.exists(os.path.join(ours, "__init__.py"))
