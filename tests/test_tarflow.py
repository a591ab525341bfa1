"""TarFlow: Transformer autoregressive blocks, their three inversions, the factory and helpers.

The shared transform properties (round trip, logabsdet vs autograd Jacobian in both directions,
context, gradients, save/load) run on the ``tarflow_*`` registry entries in conftest.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from tests_helpers import grid_integral, perturb

from normflows_sci.flows import NSF
from normflows_sci.flows.tarflow import TarFlow, gaussian_noise, sample_tarflow, score_denoise
from normflows_sci.nn.transformer import CausalTransformer, KVCache
from normflows_sci.transforms import CompositeTransform, ElementwiseAffine
from normflows_sci.transforms.tarflow import TarFlowBlock, TarFlowTransform

SMALL = dict(blocks=3, layers_per_block=1, width=16, heads=2)


def _flow(features, *, seed=0, scale=0.1, **options):
    torch.manual_seed(seed)
    flow = TarFlow(features, **{**SMALL, **options})
    return perturb(flow, scale=scale, seed=seed).double().eval()


@pytest.mark.parametrize("transform", ["affine", "spline"])
@pytest.mark.parametrize("token_size", [1, 3])
def test_fresh_block_is_the_identity(transform, token_size):
    block = TarFlowBlock(6, token_size=token_size, transform=transform, width=16, heads=2)
    x = 2.0 * torch.randn(5, 6)
    for method in ("kv_cache", "jacobi", "naive"):
        for direction in (block.forward, lambda v, m=method: block.invert(v, method=m)[:2]):
            y, logabsdet = direction(x)
            torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
            assert logabsdet.abs().max() < 1e-6


@pytest.mark.parametrize("reverse", [False, True])
def test_block_jacobian_is_token_triangular_with_diagonal_token_blocks(reverse):
    """Token t depends on tokens before it (in the block's order) only, and each feature of a token
    on its own value only: the one-token shift and the causal mask, seen in the Jacobian."""
    torch.manual_seed(0)
    block = perturb(
        TarFlowBlock(6, token_size=2, width=16, layers=1, heads=2, reverse=reverse), scale=0.2
    ).double()
    x = torch.randn(6, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda r: block(r[None])[0][0], x)
    token = torch.arange(6) // 2
    order = -token if reverse else token  # position of each feature's token in the block's order
    later = order[None, :] > order[:, None]  # input's token comes after the output's token
    same_token_other_feature = (token[None, :] == token[:, None]) & ~torch.eye(6, dtype=torch.bool)
    assert jacobian[later | same_token_other_feature].abs().max() == 0
    earlier = order[None, :] < order[:, None]
    assert jacobian[earlier].abs().min() > 1e-4  # and it does depend on every earlier token
    assert torch.diagonal(jacobian).abs().min() > 1e-3


CASES = {
    "affine_features": dict(features=12, transform="affine"),
    "spline_features_context": dict(
        features=12, transform="spline", bins=6, tail_bound=4.0, context_features=2
    ),
    "affine_particles_context": dict(features=15, token_size=3, context_features=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kv_cache_naive_and_jacobi_inversions_agree_in_float64(case):
    options = dict(CASES[case])
    features = options.pop("features")
    flow = _flow(features, **options)
    tokens = features // options.get("token_size", 1)
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(32, features, generator=generator, dtype=torch.float64)
    context = None
    if options.get("context_features"):
        context = torch.randn(32, 2, generator=generator, dtype=torch.float64)
    transform = flow.transform
    reference, reference_logabsdet, info = transform.invert(z, context, method="naive")
    assert info.iterations == SMALL["blocks"] * tokens
    runs = {"kv_cache": dict(method="kv_cache")}
    for chunk_size in (None, 1, 4, tokens - 1):
        runs[f"jacobi_chunk_{chunk_size}"] = dict(method="jacobi", tol=1e-12, chunk_size=chunk_size)
    for name, options in runs.items():
        x, logabsdet, info = transform.invert(z, context, **options)
        torch.testing.assert_close(x, reference, atol=1e-5, rtol=0, msg=name)
        torch.testing.assert_close(logabsdet, reference_logabsdet, atol=1e-5, rtol=0, msg=name)
        assert info.converged, name
        assert all(block.iterations <= tokens for block in info.blocks), (name, info)
    # The inversions invert the density direction.
    z_back, logabsdet_forward = transform(reference, context)
    torch.testing.assert_close(z_back, z, atol=1e-8, rtol=0)
    torch.testing.assert_close(logabsdet_forward, -reference_logabsdet, atol=1e-8, rtol=0)


def test_jacobi_tolerance_and_iteration_cap():
    flow = _flow(16, blocks=2, scale=0.05)
    z = torch.randn(64, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact, _, _ = flow.transform.invert(z, method="kv_cache")
    loose, _, info = flow.transform.invert(z, method="jacobi", tol=1e-6)
    # A mildly coupled flow: converged well before 16 sweeps per block, and as accurate as asked.
    assert info.converged and all(b.iterations < 16 for b in info.blocks), info
    assert (loose - exact).abs().max() < 1e-4
    capped, _, info = flow.transform.invert(z, method="jacobi", tol=0.0, max_iterations=1)
    assert not info.converged and all(b.iterations == 1 for b in info.blocks)
    assert (capped - exact).abs().max() > 1e-8


@pytest.mark.parametrize("transform", ["affine", "spline"])
def test_density_integrates_to_one_in_2d(transform):
    # Random splines stacked in 3 blocks get sharp peaks at larger scales; 0.08 keeps them
    # resolvable on the grid while the density still differs from the base by several nats.
    flow = _flow(
        2, transform=transform, tail_bound=4.0, scale=0.15 if transform == "affine" else 0.08
    )
    x = torch.randn(500, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    standard = -0.5 * x.square().sum(1) - math.log(2 * math.pi)
    assert (flow.log_prob(x) - standard).abs().max() > 1.0
    total = grid_integral(lambda x: flow.log_prob(x).exp(), bound=10.0, points=300)
    assert abs(total - 1.0) < 5e-3


def test_conditional_density_integrates_to_one_and_follows_the_context():
    flow = _flow(2, context_features=2, blocks=2, transform="spline", tail_bound=4.0, scale=0.08)
    densities = []
    for context in ([0.0, 0.0], [1.5, -2.0]):
        row = torch.tensor([context], dtype=torch.float64)

        def density(x, row=row):
            return flow.log_prob(x, row.expand(len(x), 2)).exp()

        assert abs(grid_integral(density, bound=10.0, points=250) - 1.0) < 5e-3
        with torch.no_grad():
            densities.append(density(torch.zeros(1, 2, dtype=torch.float64)))
    assert abs(float(densities[0] - densities[1])) > 1e-3
    with pytest.raises(ValueError, match="context is required"):
        flow.log_prob(torch.zeros(3, 2, dtype=torch.float64))


def test_sampling_methods_match_flow_sample_with_context():
    flow = _flow(6, context_features=2, token_size=2)
    context = torch.randn(3, 2, dtype=torch.float64)
    expected = flow.sample(4, context, generator=torch.Generator().manual_seed(5))
    assert expected.shape == (4, 3, 6)
    for method in ("kv_cache", "naive", "jacobi"):
        samples, info = sample_tarflow(
            flow, 4, context, method=method, tol=1e-12, generator=torch.Generator().manual_seed(5)
        )
        torch.testing.assert_close(samples, expected, atol=1e-8, rtol=0)
        assert info.method == method and len(info.blocks) == SMALL["blocks"]
    # Each sample follows its own context row.
    log_prob = flow.log_prob(expected.reshape(12, 6), context.repeat(4, 1))
    shuffled = flow.log_prob(expected.reshape(12, 6), context.flip(0).repeat(4, 1))
    assert (log_prob - shuffled).abs().max() > 1e-3


def test_particle_tokens_round_trip_and_reparameterised_log_prob():
    """Eight particles in 3-D, one per token: samples, log-densities and reverse-KL gradients."""
    flow = _flow(24, token_size=3, blocks=2, scale=0.1)
    samples, log_prob = flow.sample_and_log_prob(16, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (16, 24)
    torch.testing.assert_close(log_prob, flow.log_prob(samples), atol=1e-8, rtol=1e-8)
    z, _ = flow.transform(samples)
    x_back, _, info = flow.transform.invert(z, method="jacobi", tol=1e-12, chunk_size=3)
    torch.testing.assert_close(x_back, samples, atol=1e-8, rtol=0)
    assert all(b.iterations <= 8 for b in info.blocks)
    (samples.square().sum() - log_prob.sum()).backward()
    grads = [p.grad for p in flow.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    head = flow.transform[0].net.output.weight.grad
    assert head.abs().sum() > 0


def test_tarflow_fits_a_bimodal_correlated_density_better_than_a_gaussian():
    torch.manual_seed(0)
    n = 3000
    modes = torch.randint(0, 2, (2 * n,)).float() * 2 - 1
    first = 1.5 * modes + 0.4 * torch.randn(2 * n)
    data = torch.stack([first, 0.8 * first + 0.5 * torch.randn(2 * n)], dim=1)
    train, test = data[:n], data[n:]
    flow = TarFlow(2, blocks=3, layers_per_block=1, width=32, heads=2, transform="spline")
    optimizer = torch.optim.Adam(flow.parameters(), lr=5e-3)
    for _ in range(80):
        batch = train[torch.randint(n, (128,))]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mean, covariance = train.mean(0), torch.cov(train.T)
    gaussian = torch.distributions.MultivariateNormal(mean, covariance)
    with torch.no_grad():
        flow_score = flow.log_prob(test).mean().item()
    gaussian_score = gaussian.log_prob(test).mean().item()
    # The Gaussian fit scores about -2.5 nats; the bimodal truth about -1.65.
    assert flow_score > gaussian_score + 0.4, (flow_score, gaussian_score)


def test_noise_augmentation_and_score_denoising():
    add = gaussian_noise(0.3)
    noisy = add(torch.zeros(20000, 2, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert noisy.dtype == torch.float64 and abs(float(noisy.std()) - 0.3) < 0.01
    flow = _flow(4, scale=0.15)
    x = torch.randn(5, 4, dtype=torch.float64)
    denoised = score_denoise(flow, x, 0.2)
    # Tweedie's step against central finite differences of log p.
    eps = 1e-5
    eye = torch.eye(4, dtype=torch.float64)
    score = torch.stack(
        [(flow.log_prob(x + eps * e) - flow.log_prob(x - eps * e)) / (2 * eps) for e in eye], 1
    )
    torch.testing.assert_close(denoised, x + 0.04 * score.detach(), atol=1e-7, rtol=1e-6)
    assert not denoised.requires_grad
    samples, _ = sample_tarflow(flow, 3, denoise_sigma=0.2, generator=torch.Generator())
    assert samples.shape == (3, 4) and torch.isfinite(samples).all()


def test_sample_tarflow_finds_the_stack_inside_a_composite():
    """As in the DensityEstimator: preprocessing steps, then the TarFlow stack."""
    core = _flow(4)
    standardise = ElementwiseAffine(4, shift=1.0, scale=2.0).double()
    flow = type(core)(CompositeTransform([standardise, core.transform]), core.base)
    expected = flow.sample(6, generator=torch.Generator().manual_seed(3))
    samples, info = sample_tarflow(
        flow, 6, method="jacobi", tol=1e-12, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(samples, expected, atol=1e-8, rtol=0)
    assert info.method == "jacobi"
    with pytest.raises(TypeError, match="no TarFlowTransform"):
        sample_tarflow(NSF(2, transforms=1, hidden_features=(4,)), 2)


@pytest.mark.parametrize("mode", ["grad", "no_grad", "inference_mode"])
@pytest.mark.parametrize("capacity", [None, 2, 9])
def test_transformer_cache_matches_the_full_pass_for_chunks(mode, capacity):
    # "grad" concatenates (autograd sees every step); the other modes write into storage
    # allocated once (capacity 9) or grown when too small (None, 2).
    torch.manual_seed(0)
    net = CausalTransformer(2, 3, max_tokens=9, width=16, layers=2, heads=4, context_features=1)
    net = net.double()
    x = torch.randn(4, 9, 2, dtype=torch.float64)
    context = torch.randn(4, 1, dtype=torch.float64)
    full = net(x, context).detach()
    scope = {"grad": torch.enable_grad, "no_grad": torch.no_grad}.get(mode, torch.inference_mode)
    with scope():
        cache = KVCache(net.num_layers, capacity)
        pieces = [net(x[:, a:b], context, cache=cache) for a, b in ((0, 4), (4, 5), (5, 9))]
        torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-12, rtol=0)
        # A read-only pass leaves the cache as it was; keep=1 stores only the first position.
        cache = KVCache(net.num_layers, capacity)
        net(x[:, :3], context, cache=cache)
        peek = net(x[:, 3:6], context, cache=cache, update_cache=False)
        torch.testing.assert_close(peek, full[:, 3:6], atol=1e-12, rtol=0)
        assert cache.length == 3
        other = torch.randn(4, 2, 2, dtype=torch.float64)
        net(other, context, cache=cache, keep=1)
        assert cache.length == 4
        rest = net(x[:, 4:9], context, cache=cache)
        assert cache.length == 9
    # Only the first of the two new positions was kept; the scratch one was overwritten.
    expected = net(torch.cat([x[:, :3], other[:, :1], x[:, 4:9]], 1), context)[:, 4:]
    torch.testing.assert_close(rest, expected, atol=1e-12, rtol=0)
    assert rest.requires_grad == (mode == "grad")
    with pytest.raises(ValueError, match="max_tokens"):
        net(torch.zeros(1, 10, 2, dtype=torch.float64), context[:1])


def test_transformer_cache_gradients_match_the_full_pass():
    # Sampling with gradients (e.g. reverse-KL training) differentiates through the cache.
    torch.manual_seed(1)
    net = CausalTransformer(1, 2, max_tokens=5, width=8, layers=2, heads=2).double()
    x = torch.randn(3, 5, 1, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 5, 2, dtype=torch.float64)
    (net(x) * weight).sum().backward()
    expected = [x.grad.clone()] + [p.grad.clone() for p in net.parameters()]
    x.grad = None
    net.zero_grad()
    cache = KVCache(net.num_layers, 5)
    out = torch.cat([net(x[:, t : t + 1], cache=cache) for t in range(5)], 1)
    (out * weight).sum().backward()
    got = [x.grad] + [p.grad for p in net.parameters()]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="capacity must be"):
        KVCache(2, 0)


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="multiple of token_size=3"):
        TarFlow(4, token_size=3)
    with pytest.raises(ValueError, match="heads must be a positive divisor of width=10"):
        TarFlow(4, width=10, heads=4)
    with pytest.raises(ValueError, match="transform must be"):
        TarFlow(4, transform="cubic")
    with pytest.raises(ValueError, match="method must be one of"):
        TarFlow(4, inversion="newton")
    with pytest.raises(ValueError, match="blocks must be a positive integer"):
        TarFlow(4, blocks=0)
    flow = TarFlow(4, **SMALL)
    with pytest.raises(ValueError, match="tol must be"):
        flow.transform.invert(torch.zeros(2, 4), method="jacobi", tol=-1.0)
    with pytest.raises(ValueError, match="chunk_size must be"):
        flow.transform.invert(torch.zeros(2, 4), method="jacobi", chunk_size=0)
    with pytest.raises(ValueError, match=r"inputs must have shape \(batch, 4\)"):
        flow.log_prob(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="must have 4 features"):
        flow.transform(torch.zeros(2, 5))
    with pytest.raises(TypeError, match="TarFlowBlock"):
        TarFlowTransform([ElementwiseAffine(4)])
    assert math.isfinite(float(flow.log_prob(torch.zeros(1, 4)).detach()))
    for method in ("kv_cache", "naive", "jacobi"):  # an empty batch is not an error
        assert sample_tarflow(flow, 0, method=method)[0].shape == (0, 4)


def test_tarflow_takes_map_and_keeps_transform_as_its_former_name():
    from normflows_sci.transforms import RQSplineMap

    def log_prob(**options):
        torch.manual_seed(0)
        flow = perturb(TarFlow(4, **SMALL, **options), seed=1)
        return flow.log_prob(torch.linspace(-2, 2, 8).view(2, 4))

    spline = RQSplineMap(bins=4, tail_bound=3.0)
    expected = log_prob(transform="spline", bins=4, tail_bound=3.0)
    torch.testing.assert_close(log_prob(map="spline", bins=4, tail_bound=3.0), expected)
    torch.testing.assert_close(log_prob(map=spline), expected)
    flow = TarFlow(4, map=spline, **SMALL)
    assert all(block.map is spline for block in flow.transform)
    with pytest.raises(TypeError, match=r"not next to map=: got \['bins'\]"):
        TarFlow(4, map=spline, bins=5)
    with pytest.raises(TypeError, match="map= only"):
        TarFlow(4, map="spline", transform="spline")
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['mlp_ration'\]"):
        TarFlow(4, mlp_ration=2.0)
