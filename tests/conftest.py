import pytest
import torch

from abrupt.config import ModelConfig
from abrupt.model import MatrixBert


@pytest.fixture
def small_model() -> MatrixBert:
    torch.manual_seed(0)
    return MatrixBert(ModelConfig(hidden=32, layers=2, heads=4, mlp=64), seq_len=49).eval()


def randomize(model: MatrixBert, seed: int = 0) -> MatrixBert:
    """Every parameter random (LayerNorms included), MASK row kept at zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.tok_embed.weight[0].zero_()
    return model
