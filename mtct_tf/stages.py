"""The training stages and the stages each method runs.

Filled in below by the stage table; for now the method plan.
"""

# Method -> the stages it runs, in order.
METHODS = {
    "mtct": ("shop", "street"),
    "ftt": ("shop", "street"),
    "no_adapt": ("shop",),
    "ud": ("united",),
    "end_to_end": ("joint",),
}


def final_stage(method):
    """The stage whose model is a method's result."""
    return METHODS[method][-1]
