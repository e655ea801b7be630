"""A demo analysis written by a test: one new file, nothing else edited."""
from abrupt.analysis.common import Result, Table, Text
from abrupt.losses import evaluate
from abrupt.data import seeded_batch

TITLE = "Demo analysis added as one file"
PAPER = "Not in the paper."
ORDER = 999


def run(inputs, seed: int = 0, n: int = 8) -> Result:
    batch = seeded_batch(inputs.data, n, seed)
    return Result({"rows": [{"step": s, **evaluate(m, batch)} for s, m in inputs.models.items()]})


def plot(result, out):
    return []


def render(r):
    return [Text("demo rows:"), Table(["step", "L_mask"], [[x["step"], x["loss_mask"]] for x in r["rows"]])]
