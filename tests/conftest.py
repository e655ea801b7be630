import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from abrupt.config import ModelConfig
from abrupt.models.bert import MatrixBert


@pytest.fixture
def small_model() -> MatrixBert:
    torch.manual_seed(0)
    return MatrixBert(ModelConfig(width=32, layers=2, heads=4, mlp=64), seq_len=49).eval()


def randomize(model: MatrixBert, seed: int = 0) -> MatrixBert:
    """Every parameter random (LayerNorms included), MASK row kept at zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.tok_embed.weight[0].zero_()
    return model


def hand_set_row_head() -> MatrixBert:
    """One layer whose single head attends within the query's row: positions one-hot by row, Q = K =
    20 I."""
    model = MatrixBert(ModelConfig(width=8, layers=1, heads=1, mlp=8), seq_len=49).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.ln_embed.weight.fill_(1.0)
        model.pos_embed.weight.copy_(torch.nn.functional.one_hot(torch.arange(49) // 7, 8).float())
        attn = model.blocks[0].attn
        attn.q.weight.copy_(20 * torch.eye(8))
        attn.k.weight.copy_(20 * torch.eye(8))
        model.blocks[0].ln_attn.weight.fill_(1.0)
        model.blocks[0].ln_mlp.weight.fill_(1.0)
    return model


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (small tensors gain nothing from more, and lose much on a
    shared machine); the thread count is restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# `abrupt` with extra folders on packages' __path__, where registries look for modules
_PLUGIN_CLI = """import importlib, sys
for package, folder in {plugins!r}.items():
    module = importlib.import_module(package)
    module.__path__.append(folder)
    if hasattr(module, "_registry"):  # tasks/, interventions/: found at import, so look again
        module._registry.cache_clear()
        module._registry()
from abrupt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def plugin_cli(plugins: dict[str, Path], *args: str) -> subprocess.CompletedProcess:
    """Run `abrupt ARGS` in a subprocess that first appends each folder to its package's `__path__`
    ({"abrupt.tasks": folder, ...}): a test adds a task or an analysis module from a temporary
    folder, never writing into the installed package (which may be shared or read-only)."""
    code = _PLUGIN_CLI.format(plugins={k: str(v) for k, v in plugins.items()})
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def needs_extra(extra: str, *modules: str) -> Callable[[Callable], Callable]:
    """A decorator for a test that needs the optional extra `extra` (its `modules`), which the
    README's set-up (`.[test]`) does not install: the test is skipped, saying what to install,
    where one of them is missing, and marked `extra`: .ci/run runs these again once it has
    installed the extras."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    reason = f"needs pip install 'abrupt[{extra}]' ({', '.join(missing)} not installed)"

    def mark(test: Callable) -> Callable:
        return pytest.mark.extra(pytest.mark.skipif(bool(missing), reason=reason)(test))

    return mark
