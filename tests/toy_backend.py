"""A toy backend in one module: the reference ops, counting their calls (tests/test_ops_registry.py)."""
from nuwa_fast.ops import reference

calls = {}


def _counted(name):
    fn = getattr(reference, name)

    def op(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return fn(*args, **kwargs)
    op.__name__ = name
    return op


patch_attention = _counted("patch_attention")
adc_gather = _counted("adc_gather")
ncp_select = _counted("ncp_select")
ncp_add = _counted("ncp_add")
ncp_remove = _counted("ncp_remove")
