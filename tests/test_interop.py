"""nflows interop: either package's flows, transforms and bases work in the other."""

from __future__ import annotations

import pytest
import torch

nflows = pytest.importorskip("nflows")
from nflows import distributions as nd  # noqa: E402
from nflows import flows as nf  # noqa: E402
from nflows import transforms as nt  # noqa: E402
from tests_helpers import perturb  # noqa: E402

from normflows_sci.flows import NSF, Flow  # noqa: E402
from normflows_sci.interop.nflows import (  # noqa: E402
    NflowsDistribution,
    from_nflows,
    to_nflows,
)
from normflows_sci.transforms import CompositeTransform, ReversePermutation  # noqa: E402


def test_our_flow_inside_nflows_has_equal_log_probs_and_samples():
    torch.manual_seed(0)
    ours = perturb(NSF(3, 2, transforms=2, hidden_features=(16,)), scale=0.2)
    theirs = to_nflows(ours)
    assert isinstance(theirs, nf.Flow)
    x, context = torch.randn(10, 3), torch.randn(10, 2)
    torch.testing.assert_close(theirs.log_prob(x, context), ours.log_prob(x, context))
    samples = theirs.sample(4, context=context[:2])
    assert samples.shape == (2, 4, 3)  # nflows' layout: (context batch, num_samples, ...)
    samples, log_prob = theirs.sample_and_log_prob(4, context=context[:2])
    expected = ours.log_prob(samples.reshape(8, 3), context[:2].repeat_interleave(4, 0))
    torch.testing.assert_close(log_prob.reshape(8), expected, atol=1e-5, rtol=1e-5)


def test_nflows_flow_as_ours_has_equal_log_probs():
    torch.manual_seed(0)
    transform = nt.CompositeTransform(
        [
            nt.MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                3, 16, context_features=2, num_bins=4, tails="linear", tail_bound=3.0
            ),
            nt.ReversePermutation(3),
            nt.MaskedAffineAutoregressiveTransform(3, 16, context_features=2),
        ]
    )
    theirs = nf.Flow(transform, nd.StandardNormal([3]))
    perturb(theirs, scale=0.1)
    ours = from_nflows(theirs)
    assert isinstance(ours, Flow) and isinstance(ours.base, NflowsDistribution)
    x, context = torch.randn(10, 3), torch.randn(10, 2)
    torch.testing.assert_close(ours.log_prob(x, context), theirs.log_prob(x, context))
    samples, log_prob = ours.sample_and_log_prob(
        5, context[:3], generator=torch.Generator().manual_seed(0)
    )
    assert samples.shape == (5, 3, 3)
    expected = theirs.log_prob(samples.reshape(15, 3), context[:3].repeat(5, 1)).reshape(5, 3)
    torch.testing.assert_close(log_prob, expected, atol=1e-5, rtol=1e-5)


def test_transforms_mix_in_one_composite():
    torch.manual_seed(0)
    mixed = CompositeTransform(
        [from_nflows(nt.MaskedAffineAutoregressiveTransform(3, 8)), ReversePermutation(3)]
    )
    perturb(mixed, scale=0.2)
    x = torch.randn(6, 3)
    z, logabsdet = mixed(x)
    x_back, inverse_logabsdet = mixed.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inverse_logabsdet, -logabsdet, atol=1e-5, rtol=1e-5)
    in_nflows = nt.CompositeTransform([to_nflows(ReversePermutation(3)), nt.ReversePermutation(3)])
    torch.testing.assert_close(in_nflows(x)[0], x)


def test_inverse_not_available_is_translated():
    from normflows_sci.transforms import InverseNotAvailable

    class ForwardOnly(nt.Transform):
        def forward(self, inputs, context=None):
            return inputs, torch.zeros(inputs.shape[0])

    with pytest.raises(InverseNotAvailable):
        from_nflows(ForwardOnly()).inverse(torch.zeros(2, 3))


def test_wrong_types_are_clear_errors():
    with pytest.raises(TypeError, match="nflows Flow, Transform or Distribution"):
        from_nflows(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="normflows_sci Flow, Transform or Distribution"):
        to_nflows(torch.nn.Linear(2, 2))
