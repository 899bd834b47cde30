"""Shared-prefix attention (kernels/shared_prefix.py) equals plain causal attention over prefix + suffix."""

from __future__ import annotations

import pytest
import torch
from repocomplete.kernels.shared_prefix import reference_attention, shared_prefix_attention


def _inputs(b, hkv, groups, n, p, s, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    d = 16
    q = torch.randn(b, hkv * groups, n, d, generator=gen)
    pk, pv = (torch.randn(1, hkv, p, d, generator=gen).to(dtype) for _ in range(2))
    sk, sv = (torch.randn(b, hkv, s, d, generator=gen).to(dtype) for _ in range(2))
    return q, pk, pv, sk, sv


@pytest.mark.parametrize("b", [1, 3, 5])
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("n", [1, 4])
@pytest.mark.parametrize("p, s", [(37, 4), (37, 9), (16, 13), (0, 6)])
def test_equals_the_concatenated_reference(b, groups, n, p, s):
    q, pk, pv, sk, sv = _inputs(b, 2, groups, n, p, s)
    start = s - n  # the new rows are the suffix's last n
    got = shared_prefix_attention(q, pk, pv, sk, sv, start, 0.25)
    assert got.shape == (b, n, 2 * groups, 16) and got.dtype == torch.float32
    torch.testing.assert_close(got, reference_attention(q, pk, pv, sk, sv, start, 0.25), rtol=1e-5, atol=1e-5)


def test_rows_past_the_new_ones_are_ignored():
    """A preallocated suffix buffer may be passed whole: rows after suffix_start + n do not count."""
    q, pk, pv, sk, sv = _inputs(3, 2, 3, 1, 20, 12)
    got = shared_prefix_attention(q, pk, pv, sk, sv, 4, 0.25)
    torch.testing.assert_close(got, reference_attention(q, pk, pv, sk[:, :, :5], sv[:, :, :5], 4, 0.25))
    sk[:, :, 5:] = 1e4  # garbage in the unused rows changes nothing
    torch.testing.assert_close(got, shared_prefix_attention(q, pk, pv, sk, sv, 4, 0.25))


def test_bf16_keys_are_computed_in_float32():
    q, pk, pv, sk, sv = _inputs(3, 1, 3, 4, 33, 7, dtype=torch.bfloat16)
    got = shared_prefix_attention(q, pk, pv, sk, sv, 3, 0.25)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference_attention(q, pk, pv, sk, sv, 3, 0.25), rtol=1e-5, atol=1e-5)


def test_a_sequence_sees_only_its_own_suffix():
    q, pk, pv, sk, sv = _inputs(2, 2, 1, 1, 10, 3)
    one = shared_prefix_attention(q[:1], pk, pv, sk[:1], sv[:1], 2, 0.25)
    sk[1] += 5.0  # the other sequence's K/V
    torch.testing.assert_close(shared_prefix_attention(q, pk, pv, sk, sv, 2, 0.25)[:1], one)
