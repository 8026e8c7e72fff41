"""Float32 matrix products emulated with int8 products ("split int8"), for CPUs with int8 units.

Each operand row x is written as ``scale * (hi + lo / SLICE_BASE)`` with ``hi`` and ``lo``
integers in [-127, 127]: ``scale = max|x| / 127``, ``hi`` = x / scale rounded, ``lo`` = the
rounding residual (at most 1/2) times 254, rounded. That keeps about 16 bits of each row
(error <= 2^-16 of the row's largest magnitude), against float32's 24. A product of two split
operands is then

    a . b ~= sa * sb * (a_hi . b_hi + (a_hi . b_lo + a_lo . b_hi) / SLICE_BASE)

(the lo . lo term, 2^-16 smaller, is left out): one int8 product with K terms and one with 2K
(``[a_hi | a_lo] . [b_lo | b_hi]``). onnxruntime's ``MatMulIntegerToFloat`` (com.microsoft
domain, CPU provider) runs these on uint8 x int8 kernels, which on CPUs with AMX-INT8 are ~7x
the float32 matrix rate; integer sums are exact, and the scales are applied on the output.

Only the patch-word score product of the scorer uses this (``export`` writes it as three extra
graphs, ``runtime`` picks them on such CPUs): its error there is ~1e-5 of the similarities' scale.
In eager PyTorch the integer products are computed in float64 (exact), so the exported graph and
this module agree to float32 rounding.
"""
from __future__ import annotations

import torch

INT8_MAX = 127
SLICE_BASE = 2 * INT8_MAX  # the low slice is the high slice's rounding residual times this
UINT8_ZERO_POINT = 128  # the left operand travels as uint8 (the fast uint8 x int8 kernels)


def split_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` [..., K] -> (hi, lo, scale [...]): x ~= scale * (hi + lo / SLICE_BASE) per row.

    ``hi``/``lo`` are float tensors holding integers in [-127, 127]; all-zero rows get scale 1.
    """
    scale = x.abs().amax(dim=-1) / INT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    ratio = x / scale.unsqueeze(-1)
    hi = torch.round(ratio).clamp(-INT8_MAX, INT8_MAX)
    lo = torch.round((ratio - hi) * SLICE_BASE).clamp(-INT8_MAX, INT8_MAX)
    return hi, lo, scale


def split_left(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left operand rows [..., K] -> (hi uint8 [..., K], hi|lo uint8 [..., 2K], scale [...])."""
    hi, lo, scale = split_rows(x)
    hi_u8 = (hi + UINT8_ZERO_POINT).to(torch.uint8)
    return hi_u8, torch.cat([hi_u8, (lo + UINT8_ZERO_POINT).to(torch.uint8)], dim=-1), scale


def split_right(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right operand rows [..., K] -> (hi int8 [..., K], lo|hi int8 [..., 2K], scale [...])."""
    hi, lo, scale = split_rows(x)
    hi_s8 = hi.to(torch.int8)
    return hi_s8, torch.cat([lo.to(torch.int8), hi_s8], dim=-1), scale


class _IntegerProduct(torch.autograd.Function):
    """(a - 128) @ b * a_scale * b_scale for uint8 a [M,K], int8 b [K,N], a_scale [M,1], b_scale [N].

    Exported as one com.microsoft ``MatMulIntegerToFloat`` node (onnxruntime CPU).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor,  # type: ignore[override]
                b_scale: torch.Tensor) -> torch.Tensor:
        ints = (a.to(torch.float64) - UINT8_ZERO_POINT) @ b.to(torch.float64)
        return (ints * (a_scale * b_scale).to(torch.float64)).to(a_scale.dtype)

    @staticmethod
    def symbolic(g, a, b, a_scale, b_scale):  # noqa: ANN001, D102 - torch.onnx hook
        zero_point = g.op("Constant", value_t=torch.tensor(UINT8_ZERO_POINT, dtype=torch.uint8))
        out = g.op("com.microsoft::MatMulIntegerToFloat", a, b, a_scale, b_scale, zero_point)
        out.setType(a_scale.type().with_sizes([None, None]))  # float [M, N]: no shape-inference warning
        return out


def split_product(left_hi: torch.Tensor, left_hilo: torch.Tensor, left_scale: torch.Tensor,
                  right_hi: torch.Tensor, right_lohi: torch.Tensor, right_scale: torch.Tensor) -> torch.Tensor:
    """[M, N] ~= left @ right^T from split rows: left [M, K] (``split_left``), right [N, K]
    (``split_right``); ``*_scale`` [M] and [N]."""
    a_scale = left_scale.reshape(-1, 1)
    high = _IntegerProduct.apply(left_hi, right_hi.t(), a_scale, right_scale)
    cross = _IntegerProduct.apply(left_hilo, right_lohi.t(), a_scale, right_scale / SLICE_BASE)
    return high + cross
