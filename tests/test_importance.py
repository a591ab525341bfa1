"""Importance sampling: weights, ESS, log Z and reweighted estimates recover known answers."""

from __future__ import annotations

import math
import re

import pytest
import torch
from tests_helpers import perturb

from normflows_sci.distributions import GaussianMixture, StandardNormal
from normflows_sci.energies import GaussianMixture2D, ManyWell
from normflows_sci.flows import NSF, Flow
from normflows_sci.samplers import importance_sample, importance_weights
from normflows_sci.transforms import ElementwiseAffine


def gaussian_proposal(features: int, scale: float, dtype=torch.float64) -> Flow:
    """A Flow that is exactly N(0, scale^2 I)."""
    flow = Flow(
        ElementwiseAffine(features, scale=1.0 / scale, learnable=False), StandardNormal(features)
    )
    return flow.to(dtype)


class ShiftedGaussian:
    """Unnormalised N(mean, 1) in 1-D: u = (x - mean)^2 / 2 + offset, log Z = log sqrt(2 pi) - offset."""

    def __init__(self, mean=0.5, offset=3.0):
        self.mean, self.offset = mean, offset
        self.log_z = 0.5 * math.log(2 * math.pi) - offset

    def log_prob(self, x):
        return -(0.5 * (x[:, 0] - self.mean) ** 2 + self.offset)


def test_exact_proposal_gives_full_ess_and_zero_weight_variance():
    torch.manual_seed(0)
    flow = perturb(NSF(3, transforms=2, hidden_features=(16,))).double()
    result = importance_sample(flow, flow, 2000, generator=torch.Generator().manual_seed(1))
    assert result.ess == pytest.approx(2000, rel=1e-9)
    assert result.ess_fraction == pytest.approx(1.0, rel=1e-9)
    assert float(result.log_weights.std()) < 1e-10
    assert result.log_z == pytest.approx(0.0, abs=1e-10)
    assert result.log_z_stderr < 1e-4


def test_log_z_expectation_probability_and_free_energy_of_a_gaussian():
    target = ShiftedGaussian()
    result = importance_sample(
        gaussian_proposal(1, 1.5),
        target,
        200_000,
        batch_size=50_000,
        generator=torch.Generator().manual_seed(0),
    )
    assert 0.5 < result.ess_fraction < 0.95
    assert abs(result.log_z - target.log_z) < 4 * result.log_z_stderr
    assert result.log_z_stderr < 0.01
    mean, stderr = result.expectation(lambda x: x[:, 0])
    assert abs(float(mean) - 0.5) < 4 * float(stderr)
    p_pos = 0.5 * (1 + math.erf(0.5 / math.sqrt(2)))
    prob, prob_err = result.probability(lambda x: x[:, 0] > 0)
    assert abs(prob - p_pos) < 4 * prob_err
    delta, delta_err = result.free_energy_difference(lambda x: x[:, 0] < 0, lambda x: x[:, 0] > 0)
    exact = -math.log(p_pos / (1 - p_pos))
    assert abs(delta - exact) < 4 * delta_err and delta_err < 0.02
    density, err, edges = result.histogram(lambda x: x[:, 0], bins=20, range=(-2.5, 3.5))
    centres = 0.5 * (edges[1:] + edges[:-1])
    exact_density = torch.exp(-0.5 * (centres - 0.5) ** 2) / math.sqrt(2 * math.pi)
    width = float(edges[1] - edges[0])
    # A bin average differs from the midpoint value by at most width^2 / 24 * max|f''| (0.4 here).
    assert torch.all((density - exact_density).abs() < 4 * err + width**2 / 24 * 0.4)


def test_log_z_error_bar_is_calibrated():
    target = ShiftedGaussian(mean=1.0, offset=-2.0)
    proposal = gaussian_proposal(1, 1.3)
    z_scores = []
    for seed in range(40):
        r = importance_sample(proposal, target, 400, generator=torch.Generator().manual_seed(seed))
        z_scores.append((r.log_z - target.log_z) / r.log_z_stderr)
    z_scores = torch.tensor(z_scores)
    assert float((z_scores.abs() < 2).double().mean()) >= 0.8
    assert 0.6 < float(z_scores.std()) < 1.5


def test_resample_follows_weights():
    target = ShiftedGaussian(mean=0.3, offset=0.0)
    result = importance_sample(
        gaussian_proposal(1, 1.5), target, 50_000, generator=torch.Generator().manual_seed(3)
    )
    draws = result.resample(20_000, generator=torch.Generator().manual_seed(4))
    assert draws.shape == (20_000, 1)
    assert abs(float(draws.mean()) - 0.3) < 0.05


def test_zero_target_density_gets_zero_weight():
    log_p = torch.tensor([0.0, -math.inf, 0.0])
    out = importance_weights(log_p, torch.zeros(3))
    assert out["weights"].tolist() == [0.5, 0.0, 0.5]
    assert out["ess"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "log_p, log_q, message",
    [
        (torch.tensor([0.0, math.nan]), torch.zeros(2), "NaN"),
        (torch.zeros(2), torch.tensor([0.0, -math.inf]), "proposal"),
        (torch.full((2,), -math.inf), torch.zeros(2), "every importance weight is zero"),
        (torch.tensor([0.0, math.inf]), torch.zeros(2), r"\+inf"),
    ],
)
def test_bad_log_densities_raise(log_p, log_q, message):
    with pytest.raises(ValueError, match=message):
        importance_weights(log_p, log_q)


def test_bad_arguments_raise():
    proposal = gaussian_proposal(1, 1.0)
    target = ShiftedGaussian()
    with pytest.raises(ValueError, match="num_samples"):
        importance_sample(proposal, target, 0)
    with pytest.raises(ValueError, match="batch_size"):
        importance_sample(proposal, target, 10, batch_size=0)
    with pytest.raises(TypeError, match="sample_and_log_prob"):
        importance_sample(target, target, 10)
    with pytest.raises(TypeError, match="target"):
        importance_sample(proposal, 3.0, 10)
    result = importance_sample(proposal, target, 100, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="no importance weight"):
        result.free_energy_difference(lambda x: x[:, 0] > 100, lambda x: x[:, 0] < 0)
    with pytest.raises(ValueError, match="one value per sample"):
        result.expectation(torch.zeros(3))


def test_follows_device_and_dtype(device):
    proposal = gaussian_proposal(2, 1.0, dtype=torch.float32).to(device)
    target = StandardNormal(2).to(device)
    result = importance_sample(
        proposal, target, 64, generator=torch.Generator(device).manual_seed(0)
    )
    assert result.samples.device.type == device.type and result.samples.dtype == torch.float32
    assert result.ess == pytest.approx(64, rel=1e-4)


def mixture_proposal(means, scales, log_weights) -> Flow:
    """A Flow that is exactly the diagonal Gaussian mixture with the given parameters (float64)."""
    base = GaussianMixture(means.shape[1], len(means))
    with torch.no_grad():
        base.means.copy_(means)
        base.log_scales.copy_(scales.log())
        base.logits.copy_(log_weights)
    return Flow(ElementwiseAffine(means.shape[1], learnable=False), base).double()


def test_log_z_of_the_40_component_mixture_within_its_error_bar():
    target = GaussianMixture2D()  # normalised: log Z = 0
    generator = torch.Generator().manual_seed(0)
    # A deliberately imperfect proposal: shifted means, wider components, unequal weights.
    means = target.means + 0.3 * torch.randn(40, 2, generator=generator, dtype=torch.float64)
    logits = 0.3 * torch.randn(40, generator=generator, dtype=torch.float64)
    proposal = mixture_proposal(means, torch.full((40, 2), 1.4, dtype=torch.float64), logits)
    result = importance_sample(proposal, target, 100_000, generator=generator)
    assert 0.2 < result.ess_fraction < 0.99
    assert abs(result.log_z - target.log_z) < 4 * result.log_z_stderr
    assert result.log_z_stderr < 0.01


def test_log_z_of_the_many_well_within_its_error_bar():
    target = ManyWell(8)  # 16 modes, log Z known in closed form (product of 1-D integrals)
    generator = torch.Generator().manual_seed(0)
    exact = target.sample(20_000, generator=generator, dtype=torch.float64)
    modes = target.mode_index(exact)
    # Proposal: one Gaussian per mode, moments from exact samples, widened by 1.2.
    means = torch.stack([exact[modes == m].mean(0) for m in range(target.num_modes)])
    scales = torch.stack([1.2 * exact[modes == m].std(0) for m in range(target.num_modes)])
    wells = torch.stack([target.which_well(means[m : m + 1])[0] for m in range(16)])
    proposal = mixture_proposal(means, scales, target.mode_log_probability(wells))
    result = importance_sample(proposal, target, 100_000, generator=generator)
    assert result.ess_fraction > 0.2
    assert abs(result.log_z - target.log_z) < 4 * result.log_z_stderr
    assert result.log_z_stderr < 0.01


def _repeat(proposal, target, num_samples: int, estimate, seeds=range(1, 121)) -> float:
    """Standard deviation of ``estimate(result)`` over independent runs of ``num_samples``."""
    values = []
    for seed in seeds:
        result = importance_sample(
            proposal, target, num_samples, generator=torch.Generator().manual_seed(seed)
        )
        values.append(float(estimate(result)))
    return float(torch.tensor(values, dtype=torch.float64).std())


@pytest.mark.parametrize(
    "quantity, wanted, estimate",
    [
        ("log_z", 0.01, lambda r: r.log_z),
        (lambda x: x[:, 0], 0.01, lambda r: r.expectation(lambda x: x[:, 0])[0]),
        (
            (lambda x: x[:, 0] < 0, lambda x: x[:, 0] > 0),
            0.02,
            lambda r: r.free_energy_difference(lambda x: x[:, 0] < 0, lambda x: x[:, 0] > 0)[0],
        ),
    ],
    ids=["log_z", "expectation", "free_energy"],
)
def test_planned_sample_size_delivers_the_requested_standard_error(quantity, wanted, estimate):
    """A pilot of 2000 plans N; 120 independent runs at that N scatter by the requested error."""
    target, proposal = ShiftedGaussian(), gaussian_proposal(1, 1.5)
    pilot = importance_sample(proposal, target, 2000, generator=torch.Generator().manual_seed(0))
    planned = pilot.samples_needed(wanted, quantity=quantity)
    assert isinstance(planned, int) and planned > 2000  # a smaller error than the pilot's
    measured = _repeat(proposal, target, planned, estimate)
    assert measured == pytest.approx(wanted, rel=0.25)


def test_exact_proposal_plans_the_smallest_diagnosable_sample():
    """Zero variance: any N gives a zero error, but below 21 samples there is no k-hat."""
    flow = gaussian_proposal(2, 0.7)
    result = importance_sample(flow, flow, 500, generator=torch.Generator().manual_seed(0))
    assert result.samples_needed(1e-6) == 21
    assert result.samples_needed(1e-6, quantity=lambda x: torch.ones(len(x))) == 21


def test_heavier_than_sqrt_n_tail_is_planned_at_the_slower_rate():
    """k-hat in [0.5, threshold): the error shrinks as N^-(1-k), so the plan needs more than the
    1/sqrt(N) extrapolation, and at least the 10^(1/(1-k)) samples whose threshold exceeds k."""
    # Target N(0, 2.5), proposal N(0, 1): log w = 0.3 x^2 + const, k = 1 - 1 / 2.5 = 0.6.
    proposal = gaussian_proposal(1, 1.0)

    def target(x):
        return -0.5 * x[:, 0] ** 2 / 2.5

    result = importance_sample(
        proposal, target, 100_000, generator=torch.Generator().manual_seed(1)
    )
    assert 0.5 <= result.pareto_k < result.khat_threshold
    k, current = result.pareto_k, result.log_z_stderr
    planned = result.samples_needed(current / 2)
    assert planned == pytest.approx(100_000 * 2 ** (1 / (1 - k)), rel=1e-6)
    assert planned > 4 * 100_000
    assert result.samples_needed(1.0) == math.floor(10 ** (1 / (1 - k))) + 1


def test_planning_from_unreliable_weights_warns_and_returns_inf():
    """The 80-sigma target: log Z is off by thousands of nats; no sample size may be promised."""
    proposal = gaussian_proposal(1, 1.0)
    target = ShiftedGaussian(mean=80.0, offset=0.0)
    with pytest.warns(RuntimeWarning, match="unreliable importance weights"):
        result = importance_sample(
            proposal, target, 2000, generator=torch.Generator().manual_seed(0)
        )
    for quantity in ("log_z", lambda x: x[:, 0], (lambda x: x[:, 0] < 80, lambda x: x[:, 0] > 3)):
        with pytest.warns(RuntimeWarning, match=r"cannot plan the sample size.*k-hat = ") as record:
            planned = result.samples_needed(0.01, quantity=quantity)
        assert planned == math.inf and len(record) == 1
        named = re.search(r"k-hat = ([^ ,]+)", str(record[0].message)).group(1)
        assert float(named) >= result.pareto_k * 0.99 > result.khat_threshold


def test_planning_an_observable_heavier_than_the_weights_returns_inf():
    """A fine proposal (reliable weights) but E[|x|^-0.9], whose variance is infinite."""
    proposal, target = gaussian_proposal(1, 1.5), ShiftedGaussian(mean=0.0)
    result = importance_sample(proposal, target, 4000, generator=torch.Generator().manual_seed(0))
    assert result.reliable
    assert math.isfinite(result.samples_needed(0.01))
    with pytest.warns(RuntimeWarning, match="cannot plan the sample size"):
        planned = result.samples_needed(0.01, quantity=lambda x: x[:, 0].abs() ** -0.9)
    assert planned == math.inf


@pytest.mark.parametrize("stderr", [0, -0.1, math.nan, math.inf, "0.1", True, None])
def test_samples_needed_rejects_a_bad_standard_error(stderr):
    result = importance_sample(
        gaussian_proposal(1, 1.5),
        ShiftedGaussian(),
        100,
        generator=torch.Generator().manual_seed(0),
    )
    with pytest.raises(ValueError, match="stderr must be a positive finite number"):
        result.samples_needed(stderr)


def test_samples_needed_rejects_an_unknown_quantity():
    result = importance_sample(
        gaussian_proposal(1, 1.5),
        ShiftedGaussian(),
        100,
        generator=torch.Generator().manual_seed(0),
    )
    with pytest.raises(ValueError, match=r"quantity must be 'log_z'.*got 'logz'"):
        result.samples_needed(0.1, quantity="logz")
    with pytest.raises(TypeError, match=r"quantity must be .*got int"):
        result.samples_needed(0.1, quantity=3)
    with pytest.raises(ValueError, match="no importance weight"):
        result.samples_needed(0.1, quantity=(lambda x: x[:, 0] > 100, lambda x: x[:, 0] < 0))
