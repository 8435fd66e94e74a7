"""Each fusion pattern and three real blocks: captured, fused, emitted, run under the Triton
interpreter on a CPU, and compared with the eager module, in fp32 and with bf16 inputs
(upcast inside the kernels). The kernel count per case is checked with FileCheck on the
generated source."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from fusion_cases import BLOCKS, PATTERNS, Case, compile_case, filecheck, run_fused

pytest.importorskip("triton")

CASES = PATTERNS + BLOCKS


def _grown(args: tuple[Any, ...], dynamic: tuple[Any, ...]) -> tuple[Any, ...]:
    """The inputs with every dynamic dim one longer (shapes the export never saw)."""
    g = torch.Generator().manual_seed(9)
    out = []
    for a, dims in zip(args, dynamic):
        shape = [n + 1 if d in dims else n for d, n in enumerate(a.shape)]
        out.append(torch.randn(shape, generator=g).to(a.dtype))
    return tuple(out)


def _close(got: Any, want: Any, tol: float) -> None:
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        if w.is_floating_point():
            torch.testing.assert_close(g.float(), w.float(), atol=tol, rtol=tol)
        else:
            assert torch.equal(g, w)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fused_kernels_match_eager_fp32(case: Case) -> None:
    module, args, dynamic = case.build(1)
    kernel_file = compile_case(module, args, dynamic, case.name)
    filecheck(kernel_file.source, f"CHECK-COUNT-{case.kernels}: @triton.jit\nCHECK-NOT: @triton.jit")
    if case.checks:
        filecheck(kernel_file.source, case.checks)
    assert kernel_file.signature["forward"]
    with torch.no_grad():
        _close(run_fused(kernel_file, module, args), module(*args), 1e-4)
        other = _grown(args, dynamic)
        _close(run_fused(kernel_file, module, other), module(*other), 1e-4)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fused_kernels_match_eager_bf16(case: Case) -> None:
    module, args, dynamic = case.build(1)
    module = module.to(torch.bfloat16)
    args = tuple(a.to(torch.bfloat16) if a.is_floating_point() else a for a in args)
    kernel_file = compile_case(module, args, dynamic, case.name)
    assert kernel_file.source.count("@triton.jit") == case.kernels
    with torch.no_grad():
        # fp32 inside the kernels, bf16 only where eager rounds to it between ops: within bf16's precision
        _close(run_fused(kernel_file, module, args), module(*args), 6e-2)
