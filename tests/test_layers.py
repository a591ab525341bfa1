"""Layer-specific behaviour not covered by the registry's shared properties."""

from __future__ import annotations

import pytest
import torch
from tests_helpers import perturb

from normflows_sci import transforms as T
from normflows_sci.nn import MADE, MLP


@pytest.mark.parametrize("order", [None, [2, 0, 4, 1, 3]])
def test_made_is_autoregressive_in_its_order(order):
    torch.manual_seed(0)
    made = perturb(MADE(5, 3, hidden_features=(32, 32), context_features=2, order=order))
    x, context = torch.randn(1, 5), torch.randn(1, 2)
    jacobian = torch.autograd.functional.jacobian(lambda v: made(v, context), x)[0, :, :, 0, :]
    position = torch.empty(5, dtype=torch.long)
    position[torch.tensor(order or range(5))] = torch.arange(5)
    for out_feature in range(5):
        for in_feature in range(5):
            depends = jacobian[out_feature, :, in_feature].abs().sum() > 0
            assert bool(depends) == bool(position[in_feature] < position[out_feature])


def test_made_single_feature_output_matches_full_output():
    torch.manual_seed(0)
    made = perturb(MADE(4, 5, hidden_features=(16,), context_features=1))
    x, context = torch.randn(7, 4), torch.randn(7, 1)
    full = made(x, context)
    for feature in range(4):
        torch.testing.assert_close(made.forward_feature(x, feature, context), full[:, feature])


def test_param_major_outputs_match_the_plain_outputs():
    """MLP/MADE ``param_major`` (what spline layers use) is ``forward`` laid out (P, D * batch)."""
    torch.manual_seed(0)
    made = perturb(MADE(4, 5, hidden_features=(16,), context_features=1))
    x, context = torch.randn(7, 4), torch.randn(7, 1)
    expected = made(x, context).permute(2, 1, 0).reshape(5, 4 * 7)
    torch.testing.assert_close(made.param_major(x, context), expected)
    state = made.sequential(x, context)
    for feature in range(4):
        plain = state.feature(feature)
        torch.testing.assert_close(state.feature(feature, param_major=True), plain.t())
    mlp = perturb(MLP(3, 4 * 6, hidden_features=(8,)))
    x = torch.randn(9, 3)
    expected = mlp(x).view(9, 4, 6).permute(2, 1, 0).reshape(6, 4 * 9)
    torch.testing.assert_close(mlp.param_major(x, 6), expected)


@pytest.mark.parametrize("coupling", [True, False])
def test_spline_layers_parameter_major_path_matches_the_plain_path(coupling):
    """Spline layers with the package's own conditioner feed the spline parameter-major; the
    result equals the plain (batch, D, P) path that custom conditioners take."""
    torch.manual_seed(1)
    if coupling:
        layer = T.SplineCouplingTransform(T.alternating_mask(5), bins=4, hidden_features=(8,))
    else:
        layer = T.MaskedSplineAutoregressiveTransform(5, bins=4, hidden_features=(8,))
    layer = perturb(layer).double()
    x = 2 * torch.randn(11, 5, dtype=torch.float64)
    fast = layer(x), layer.inverse(x)
    spline = layer.elementwise

    class Plain(T.ElementwiseMap):  # the same map, but not an RQSplineMap: the plain path
        num_params = spline.num_params
        forward, inverse = spline.forward, spline.inverse

    layer.elementwise = Plain()
    general = layer(x), layer.inverse(x)
    layer.elementwise = spline
    torch.testing.assert_close(fast, general)


def test_actnorm_initialises_from_the_first_training_batch():
    layer = T.ActNorm(3)
    data = torch.randn(500, 3) * torch.tensor([2.0, 0.5, 10.0]) + torch.tensor([1.0, -3.0, 7.0])
    z, _ = layer(data)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=1e-5, rtol=0)
    assert bool(layer.initialized)
    before = layer.shift.detach().clone()
    layer(data * 5)  # a second batch does not re-initialise
    torch.testing.assert_close(layer.shift.detach(), before)
    fresh = T.ActNorm(3)
    fresh.load_state_dict(layer.state_dict())
    assert bool(fresh.initialized)


def test_lu_linear_weight_and_logdet():
    torch.manual_seed(0)
    layer = perturb(T.LULinear(5)).double()
    weight = layer.weight()
    x = torch.randn(4, 5, dtype=torch.float64)
    z, logabsdet = layer(x)
    torch.testing.assert_close(z, x @ weight.T + layer.bias)
    torch.testing.assert_close(logabsdet, torch.linalg.slogdet(weight)[1].expand(4))


def test_coupling_masks_leave_the_identity_features_unchanged():
    torch.manual_seed(0)
    layer = perturb(T.SplineCouplingTransform([1, 0, 0, 1, 0], hidden_features=(8,)))
    x = torch.randn(6, 5)
    z, _ = layer(x)
    torch.testing.assert_close(z[:, [1, 2, 4]], x[:, [1, 2, 4]])
    assert (z[:, [0, 3]] - x[:, [0, 3]]).abs().max() > 1e-3


def test_layers_start_at_the_identity():
    x = torch.randn(8, 4)
    for layer in (
        T.SplineCouplingTransform(T.alternating_mask(4)),
        T.AffineCouplingTransform(T.alternating_mask(4)),
        T.MaskedSplineAutoregressiveTransform(4),
        T.MaskedAffineAutoregressiveTransform(4),
        T.LULinear(4),
    ):
        z, logabsdet = layer(x)
        torch.testing.assert_close(z, x, atol=1e-6, rtol=0)
        torch.testing.assert_close(logabsdet, torch.zeros(8), atol=1e-6, rtol=0)


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="mask"):
        T.SplineCouplingTransform([0, 0, 0])
    with pytest.raises(ValueError, match="untransformed feature or a context"):
        T.AffineCouplingTransform([1, 1])
    with pytest.raises(ValueError, match="order"):
        T.MaskedAffineAutoregressiveTransform(3, order=[0, 0, 1])
    with pytest.raises(ValueError, match="permutation"):
        T.Permutation([0, 2])
    with pytest.raises(ValueError, match="scale"):
        T.ElementwiseAffine(2, scale=-1.0)
    with pytest.raises(ValueError, match="hidden_features"):
        T.MaskedAffineAutoregressiveTransform(3, hidden_features=())


@pytest.mark.parametrize("mask", [[0, 0, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 0, 1, 0]])
def test_coupling_with_contiguous_halves_matches_the_general_path(mask):
    # Contiguous blocks are split and concatenated as views; the result must equal the general
    # gather/scatter path, also after loading a state dict whose index buffers differ.
    torch.manual_seed(0)
    layer = perturb(T.SplineCouplingTransform(torch.tensor(mask), bins=4, hidden_features=(8,)))
    x = torch.randn(16, 5, dtype=torch.float64)
    layer = layer.double()
    fast = layer(x), layer.inverse(x)
    halves = layer._halves
    layer._halves = None
    general = layer(x), layer.inverse(x)
    layer._halves = halves
    torch.testing.assert_close(fast, general)
    assert (halves is None) == (mask == [0, 1, 0, 1, 0])
    scrambled = torch.tensor(mask)[torch.tensor([4, 2, 0, 3, 1])]  # same counts, other layout
    other = T.SplineCouplingTransform(scrambled, bins=4, hidden_features=(8,))
    other.double().load_state_dict(layer.state_dict())
    assert other._halves == halves
    torch.testing.assert_close(other(x), fast[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_affine_map_without_gradients_gives_the_same_bits(dtype):
    # Without autograd the map overwrites its intermediates in place (less memory while
    # sampling); the numbers must not change, nor the inputs.
    affine = T.AffineMap(2.5)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 7, generator=generator, dtype=dtype)
    params = 3 * torch.randn(300, 7, 2, generator=generator, dtype=dtype)
    x_before, params_before = x.clone(), params.clone()
    for direction in (affine.forward, affine.inverse):
        with torch.no_grad():
            plain = direction(x, params)
        tracked = direction(x, params.clone().requires_grad_())
        for a, b in zip(plain, tracked):
            assert torch.equal(a, b.detach())
    assert torch.equal(x, x_before) and torch.equal(params, params_before)


def test_affine_map_log_scale_is_the_tanh_soft_clamp():
    # s = bound * tanh(raw / bound), evaluated through a sigmoid; zero raw gives the identity.
    affine = T.AffineMap(2.5)
    raw = torch.cat([torch.linspace(-40, 40, 2001, dtype=torch.float64), torch.zeros(1).double()])
    x = torch.randn(raw.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shift = torch.zeros_like(raw)
    expected = 2.5 * torch.tanh(raw / 2.5)
    y, log_scale = affine.forward(x, torch.stack([shift, raw], -1))
    torch.testing.assert_close(log_scale, expected, atol=1e-14, rtol=0)
    torch.testing.assert_close(y, x * expected.exp(), atol=1e-12, rtol=1e-12)
    assert log_scale.abs().max() <= 2.5 and log_scale[-1] == 0 and y[-1] == x[-1]


@pytest.mark.parametrize("coupling", [True, False])
def test_any_map_that_declares_the_parameter_major_layout_receives_it(coupling):
    """The layout is the map's declaration, not its class: a map that is not an RQSplineMap but
    says ``param_major = True`` is fed parameter-major straight from the MLP / MADE, and a map
    relying on the base class's transposing default gives the same numbers as the plain path."""
    torch.manual_seed(2)
    spline = T.RQSplineMap(bins=4, tail_bound=3.0)
    calls = []

    class Recording(T.ElementwiseMap):
        num_params, param_major = spline.num_params, True
        forward, inverse = spline.forward, spline.inverse

        def forward_param_major(self, inputs, raw):
            calls.append(tuple(raw.shape))
            return spline.forward_param_major(inputs, raw)

    class Transposing(T.AffineMap):  # uses the base class's forward_param_major
        param_major = True

    def layer(map_):
        torch.manual_seed(3)
        if coupling:
            built = T.CouplingTransform(T.alternating_mask(5), map_, hidden_features=(8,))
        else:
            built = T.MaskedAutoregressiveTransform(5, map_, hidden_features=(8,))
        return perturb(built).double()

    x = 2 * torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(Recording())(x), layer(spline)(x))
    rows = 3 if coupling else 5  # transformed features
    assert calls == [(spline.num_params, rows * 7)]
    for direction in ("forward", "inverse"):
        fast = getattr(layer(Transposing()), direction)(x)
        plain = getattr(layer(T.AffineMap()), direction)(x)
        torch.testing.assert_close(fast, plain)


@pytest.mark.parametrize("kind", ["coupling", "autoregressive"])
def test_layers_take_map_and_keep_elementwise_as_a_deprecated_keyword(kind):
    def build(**kw):
        torch.manual_seed(0)
        if kind == "coupling":
            return T.CouplingTransform(T.alternating_mask(4), hidden_features=(8,), **kw)
        return T.MaskedAutoregressiveTransform(4, hidden_features=(8,), **kw)

    new = perturb(build(map=T.AffineMap()))
    with pytest.warns(DeprecationWarning, match="pass map="):
        old = perturb(build(elementwise=T.AffineMap()))
    x = torch.randn(6, 4)
    torch.testing.assert_close(old(x), new(x))
    assert isinstance(new.map, T.AffineMap) and new.elementwise is new.map
    with pytest.raises(TypeError, match="needs map="):
        build()
    with (
        pytest.raises(TypeError, match="both map and elementwise"),
        pytest.warns(DeprecationWarning),
    ):
        build(map=T.AffineMap(), elementwise=T.AffineMap())


def test_spline_layers_build_their_map_from_shorthands_or_take_one():
    spline = T.RQSplineMap(bins=5, tail_bound=2.0, min_derivative=1e-2)
    layer = T.SplineCouplingTransform(T.alternating_mask(4), spline, hidden_features=(8,))
    assert layer.map is spline
    built = T.MaskedSplineAutoregressiveTransform(4, bins=5, tail_bound=2.0, hidden_features=(8,))
    assert (built.map.bins, built.map.tail_bound) == (5, 2.0)
    with pytest.raises(TypeError, match=r"not next to map=: got \['bins'\]"):
        T.SplineCouplingTransform(T.alternating_mask(4), spline, bins=4)
    with pytest.raises(ValueError, match="map must be an ElementwiseMap, None or one of 'affine'"):
        T.make_map("cubic")
    circle = spline.circular()
    assert isinstance(circle, T.CircularSplineMap)
    assert T.make_map("circular", bins=5, tail_bound=2.0, min_derivative=1e-2).bins == 5
    with pytest.raises(TypeError, match="circular counterpart"):
        T.SplineCouplingTransform(T.alternating_mask(2), T.AffineMap(), circular=[True, True])
    assert (circle.bins, circle.options["min_derivative"]) == (5, 1e-2)


def test_affine_layers_take_a_map_or_its_max_log_scale_shorthand():
    x = torch.randn(5, 4)
    for layer in (T.AffineCouplingTransform, T.MaskedAffineAutoregressiveTransform):
        first = T.alternating_mask(4) if layer is T.AffineCouplingTransform else 4
        torch.manual_seed(0)
        given = perturb(layer(first, T.AffineMap(2.0), hidden_features=(8,)))
        torch.manual_seed(0)
        shorthand = perturb(layer(first, max_log_scale=2.0, hidden_features=(8,)))
        assert given.map.max_log_scale == 2.0
        torch.testing.assert_close(given(x), shorthand(x), rtol=0, atol=0)
