"""The C of a strided gather (pooling's and strided convolutions' dx): each interior step
writes every residue of the target's last index in turn, its sums a counted number of
terms, its loop ends free of branches, so the compiler vectorizes it (avgpool2d 2x2 backward
went from 65% of the traffic floor to above it, docs/kernels.md)."""
import re

import numpy as np
import torch
import torch.nn.functional as F

import codegen
from derive.builtins import builtin


def _backward(source: str) -> str:
    return source.split("int bp_avgpool2d_backward_f32(", 1)[1].split("\n}\n", 1)[0]


def test_one_interior_loop_writes_both_residues_of_a_row_in_turn():
    body = _backward(codegen.sources(builtin("avgpool2d"), "c")["avgpool2d.c"])
    loops = body.split("for (ptrdiff_t bp_w_q = ")
    both = [chunk for chunk in loops[1:] if "2*bp_w_q] = bp_acc_r0;" in chunk
            and "2*bp_w_q + 1] = bp_acc_r1;" in chunk]
    assert both, "no loop over bp_w_q writes w = 2*bp_w_q and 2*bp_w_q + 1 together"
    # the sums inside: one term, counted from 0 (unrolled), not a range from bp_w_q
    assert "for (ptrdiff_t bp_j_k = 0; bp_j_k < 1; ++bp_j_k) {" in both[0]
    assert "const ptrdiff_t j = bp_w_q + bp_j_k;" in both[0]
    # rows in order: row 2*bp_h_q, then row 2*bp_h_q + 1, inside one loop over bp_h_q
    rows = [m.start() for m in re.finditer(r"for \(ptrdiff_t bp_h_q = ", body)]
    assert any("*H + 2*bp_h_q)*W" in body[a:b] and "*H + 2*bp_h_q + 1)*W" in body[a:b]
               for a, b in zip(rows, rows[1:] + [len(body)]))


def test_floor_division_has_no_branch():
    """A && in bp_floordiv (a loop end) kept GCC from counting the interior's trips."""
    source = codegen.sources(builtin("avgpool2d"), "c")["avgpool2d.c"]
    floordiv = source.split("static inline ptrdiff_t bp_floordiv(", 1)[1].split("}", 1)[0]
    assert "&&" not in floordiv and "?" not in floordiv


def test_odd_sizes_and_overlapping_windows_still_equal_torch():
    """Borders of every residue around a shared interior: odd H and W (a last row and
    column no window reads), windows that overlap (K=3, S=2) and stride 3."""
    rng = np.random.default_rng(5)
    for (K, S), (H, W) in [((2, 2), (7, 9)), ((3, 2), (9, 8)), ((2, 3), (11, 7)),
                           ((3, 3), (3, 3)), ((2, 2), (2, 2))]:
        k = codegen.load("avgpool2d", backend="c", dtype="float64", constants=dict(K=K, S=S))
        x = torch.tensor(rng.normal(size=(2, 3, H, W)), requires_grad=True)
        y = F.avg_pool2d(x, K, S)
        dy = rng.normal(size=tuple(y.shape))
        y.backward(torch.tensor(dy))
        got = k.backward(x=x.detach().numpy(), dy=dy)
        np.testing.assert_allclose(got["dx"], x.grad.numpy(), rtol=1e-13, atol=1e-13,
                                   err_msg=f"K={K} S={S} H={H} W={W}")
