"""The ops registry: an absent backend is recorded with its reason, and `nuwa_fast.kernels` (the
triton backend) resolves from the source tree's kernels/triton/ when the package is not installed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from nuwa_fast import ops

ROOT = Path(__file__).resolve().parents[1]

# Hides any installed nuwa_fast.kernels (an editable install's finder included), as on a machine that
# only puts the checkout on PYTHONPATH.
NOT_INSTALLED = """
import importlib.abc, json, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "nuwa_fast.kernels":
            raise ModuleNotFoundError("hidden", name=name)
sys.meta_path.insert(0, Hide())
from nuwa_fast import ops
backends = ops.available_backends()
k = sys.modules["nuwa_fast.kernels"]
print(json.dumps(dict(backends=backends, absent=ops.absent_backends(), file=k.__file__)))
"""


def test_absent_backends_say_why():
    absent = ops.absent_backends()
    assert set(absent) | set(ops.available_backends()) == {"torch", "triton", "cuda"}
    assert not set(absent) & set(ops.available_backends())
    for name, why in absent.items():
        print(f"{name}: {why}")
        assert why.split(":")[0].endswith("Error"), why                   # the exception type, then its text
    if not torch.cuda.is_available():
        assert "cuda" in absent


def test_kernels_resolve_from_the_source_tree():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", NOT_INSTALLED], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    print(p.stdout, p.stderr[-2000:])
    assert p.returncode == 0
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert Path(got["file"]).resolve() == ROOT / "kernels" / "triton" / "__init__.py"
    assert "triton" in got["backends"] and "triton" not in got["absent"]
