"""Linear layers repacked for oneDNN on a CPU (the runtime's decode speedup) compute what the
plain ones do, in f32 and bf16, and leave tied weights where the other module needs them."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from omnigraph.runtime.executors.cpu_linear import PackedLinear, can_pack, pack_linears  # noqa: E402

pytestmark = pytest.mark.skipif(not can_pack(torch.nn.Linear(2, 2)), reason="torch built without oneDNN")


def mlp(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(96, 256), torch.nn.SiLU(), torch.nn.Linear(256, 64, bias=False)).to(dtype)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("rows", [1, 7])
def test_packed_linears_compute_what_the_plain_ones_do(dtype: torch.dtype, tol: float, rows: int) -> None:
    plain = mlp(dtype)
    packed = mlp(dtype)
    assert pack_linears(packed) == 2
    assert all(isinstance(m, PackedLinear) for m in (packed[0], packed[2]))
    x = torch.randn(3, rows, 96, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        want, got = plain(x), packed(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


def test_a_tied_weight_stays_with_the_embedding_that_shares_it() -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 32)
            self.head = torch.nn.Linear(32, 50, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(ids))

    model = Tied()
    ids = torch.arange(10)
    with torch.no_grad():
        want = model(ids)
        pack_linears(model)
        got = model(ids)
    assert isinstance(model.head, PackedLinear) and model.embed.weight.shape == (50, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_modules_off_the_cpu_are_left_alone() -> None:
    assert pack_linears(mlp(torch.float32).to("meta")) == 0
