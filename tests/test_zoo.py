"""Checks of the newer built-ins beyond the shared three-oracle tests: dropout against
torch's own F.dropout, and the optimizer steps against torch.optim over 5 consecutive
steps (state carried from one call to the next)."""
from __future__ import annotations

import numpy as np
import pytest

import codegen

from .oracles import rel_err, require_oracle


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_dropout_equals_torch_dropout(backend):
    torch = require_oracle("torch")
    torch.manual_seed(0)
    x = torch.randn(4, 7, dtype=torch.float64)
    p = 0.3
    y = torch.nn.functional.dropout(x, p, training=True)
    mask = (y != 0).to(torch.float64).numpy()
    k = codegen.load("dropout", backend=backend)
    np.testing.assert_allclose(k.forward(x=x.numpy(), mask=mask, p=p)["y"], y.numpy(),
                               rtol=1e-15)
