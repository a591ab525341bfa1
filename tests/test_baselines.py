"""Gaussian and Gaussian-mixture baselines: normalised densities, recovery of a known mixture,
agreement with scikit-learn, discrete columns and input checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from normflows_sci.baselines import GaussianBaseline, GaussianMixtureBaseline

WEIGHTS = np.array([0.5, 0.3, 0.2])
MEANS = np.array([[-3.0, 0.0], [3.0, 1.0], [0.0, 4.0]])
COVARIANCES = np.array(
    [[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[1.0, -0.3], [-0.3, 0.4]]]
)


def draw_mixture(num_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    which = rng.choice(3, size=num_samples, p=WEIGHTS)
    factors = np.linalg.cholesky(COVARIANCES)
    noise = rng.standard_normal((num_samples, 2))
    return MEANS[which] + np.einsum("nij,nj->ni", factors[which], noise)


def true_log_density(X: np.ndarray) -> np.ndarray:
    parts = [
        np.log(w) + multivariate_normal(m, c).logpdf(X)
        for w, m, c in zip(WEIGHTS, MEANS, COVARIANCES)
    ]
    return logsumexp(np.stack(parts, axis=1), axis=1)


@pytest.fixture(scope="module")
def mixture_data():
    return draw_mixture(5000, seed=1), draw_mixture(20000, seed=2)


def grid_integral(model, low, high, points: int = 501) -> float:
    """Integral of exp(score_samples) over a 2-D box by the trapezoidal rule."""
    xs = np.linspace(low[0], high[0], points)
    ys = np.linspace(low[1], high[1], points)
    grid = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(model.score_samples(grid)).reshape(points, points)
    return float(np.trapezoid(np.trapezoid(density, ys, axis=1), xs))


# ---------------------------------------------------------------------------------- normalisation


def test_gaussian_integrates_to_one():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 2)) @ np.array([[1.0, 0.0], [0.8, 0.5]]) + [1.0, -2.0]
    model = GaussianBaseline().fit(X)
    low = model.mean_ - 9 * np.sqrt(np.diag(model.covariance_))
    high = model.mean_ + 9 * np.sqrt(np.diag(model.covariance_))
    assert grid_integral(model, low, high) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_mixture_integrates_to_one(mixture_data, covariance):
    model = GaussianMixtureBaseline(3, covariance=covariance, random_state=0).fit(mixture_data[0])
    assert grid_integral(model, (-10.0, -7.0), (10.0, 11.0)) == pytest.approx(1.0, abs=1e-3)


# ------------------------------------------------------------------------------------- accuracy


def test_gaussian_matches_the_analytic_fit():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 3))
    model = GaussianBaseline().fit(X)
    expected = multivariate_normal(X.mean(0), np.cov(X.T, bias=True)).logpdf(X)
    np.testing.assert_allclose(model.score_samples(X), expected, rtol=1e-6, atol=1e-6)
    assert model.score(X) == pytest.approx(expected.mean(), abs=1e-6)


@pytest.mark.parametrize("components", [3, None])
def test_mixture_recovers_the_known_held_out_likelihood(mixture_data, components):
    train, test = mixture_data
    model = GaussianMixtureBaseline(components, random_state=0).fit(train)
    truth = true_log_density(test).mean()
    assert abs(model.score(test) - truth) < 0.02
    if components is None:
        assert model.components_ >= 3  # fewer cannot describe three separated modes
        assert set(model.validation_scores_) == {1, 2, 4, 8, 16}
        assert model.validation_scores_[1] < model.validation_scores_[model.components_] - 0.3
    else:
        assert model.converged_
        order = np.argsort(model.means_[:, 0])
        np.testing.assert_allclose(model.weights_[order], WEIGHTS[[0, 2, 1]], atol=0.03)
        np.testing.assert_allclose(model.means_[order], MEANS[[0, 2, 1]], atol=0.1)


def test_mixture_matches_scikit_learn(mixture_data):
    sklearn_mixture = pytest.importorskip("sklearn.mixture")
    train, test = mixture_data
    for covariance in ("full", "diag"):
        ours = GaussianMixtureBaseline(3, covariance=covariance, random_state=0).fit(train)
        theirs = sklearn_mixture.GaussianMixture(
            3, covariance_type=covariance, tol=1e-6, max_iter=200, random_state=0
        ).fit(train)
        assert abs(ours.score(test) - theirs.score(test)) < 0.02


def test_mixture_chooses_components_on_given_validation_rows(mixture_data):
    train, test = mixture_data
    model = GaussianMixtureBaseline(candidates=(1, 3), random_state=0).fit(train, X_val=test[:2000])
    assert model.components_ == 3
    assert set(model.validation_scores_) == {1, 3}


def test_mixture_responsibilities_sum_to_one(mixture_data):
    model = GaussianMixtureBaseline(3, random_state=0).fit(mixture_data[0])
    proba = model.predict_proba(mixture_data[1][:100])
    assert proba.shape == (100, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0)


def test_singular_data_gives_finite_densities():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 1))
    X = np.hstack([x, 2 * x, np.ones((200, 1))])  # collinear and constant columns
    for model in (GaussianBaseline(), GaussianMixtureBaseline(2, random_state=0)):
        scores = model.fit(X).score_samples(X)
        assert np.isfinite(scores).all()


def test_large_offsets_lose_no_precision(mixture_data):
    train, test = mixture_data
    shifted = GaussianMixtureBaseline(3, random_state=0).fit(train + 1e6)
    plain = GaussianMixtureBaseline(3, random_state=0).fit(train)
    assert shifted.score(test + 1e6) == pytest.approx(plain.score(test), abs=1e-6)


# -------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("model", [GaussianBaseline(), GaussianMixtureBaseline(3, random_state=0)])
def test_sampling_is_reproducible_and_matches_the_moments(mixture_data, model):
    train = mixture_data[0]
    model.fit(train)
    samples = model.sample(20000, random_state=5)
    assert samples.shape == (20000, 2)
    np.testing.assert_array_equal(samples, model.sample(20000, random_state=5))
    np.testing.assert_allclose(samples.mean(0), train.mean(0), atol=0.06)
    np.testing.assert_allclose(np.cov(samples.T), np.cov(train.T), atol=0.15)
    assert model.sample(0).shape == (0, 2)


# ---------------------------------------------------------------------------------- discrete data


@pytest.mark.parametrize(
    "model",
    [
        GaussianBaseline(discrete=[1]),
        GaussianMixtureBaseline(2, discrete=[1], random_state=0),
        GaussianMixtureBaseline(
            discrete=np.array([False, True]), candidates=(1, 2), random_state=0
        ),
    ],
)
def test_discrete_columns_get_normalised_probabilities(model):
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=3000), rng.poisson(3.0, size=3000)]).astype(float)
    model.fit(X)
    # Probability of each integer cell times density of the continuous column: integrates to 1.
    xs = np.linspace(-8, 8, 801)
    ks = np.arange(-15, 25)
    grid = np.stack(np.meshgrid(xs, ks, indexing="ij"), -1).reshape(-1, 2)
    mass = np.exp(model.score_samples(grid)).reshape(len(xs), len(ks)).sum(1)
    assert float(np.trapezoid(mass, xs)) == pytest.approx(1.0, abs=1e-3)
    samples = model.sample(500, random_state=0)
    np.testing.assert_array_equal(samples[:, 1], np.round(samples[:, 1]))
    with pytest.raises(ValueError, match="non-integer"):
        model.score_samples(np.array([[0.0, 1.5]]))


def test_dequantised_gaussian_moments():
    X = np.column_stack([np.arange(10.0), np.arange(10.0) % 3])
    model = GaussianBaseline(discrete=[0, 1]).fit(X)
    np.testing.assert_allclose(model.mean_, X.mean(0) + 0.5)
    np.testing.assert_allclose(np.diag(model.covariance_), X.var(0) + 1 / 12, rtol=1e-5)


# ------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("make", [GaussianBaseline, lambda: GaussianMixtureBaseline(2)])
def test_bad_inputs_raise_clear_errors(make):
    model = make()
    with pytest.raises(RuntimeError, match="not fitted"):
        model.score_samples(np.zeros((2, 2)))
    bad = np.random.default_rng(0).normal(size=(50, 2))
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or inf .*row 7"):
        model.fit(bad)
    with pytest.raises(ValueError, match=r"X must be 2-D"):
        model.fit(np.zeros(10))
    with pytest.raises(TypeError, match="X must be a numeric array"):
        model.fit([["a", "b"], ["c", "d"]])
    model.fit(np.random.default_rng(0).normal(size=(50, 2)))
    with pytest.raises(ValueError, match=r"X must have 2 features .* got 3"):
        model.score_samples(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        model.score(np.array([[0.0, np.inf]]))
    with pytest.raises(ValueError, match="num_samples"):
        model.sample(-1)
    with pytest.raises(ValueError, match="non-integer values in discrete columns"):
        type(model)(discrete=[0]).fit(np.random.default_rng(0).normal(size=(50, 2)))
    with pytest.raises(ValueError, match="discrete column indices"):
        type(model)(discrete=[5]).fit(np.zeros((10, 2)))


def test_bad_mixture_arguments():
    with pytest.raises(ValueError, match="components"):
        GaussianMixtureBaseline(0)
    with pytest.raises(ValueError, match="candidates"):
        GaussianMixtureBaseline(candidates=())
    with pytest.raises(ValueError, match="covariance"):
        GaussianMixtureBaseline(covariance="tied")
    with pytest.raises(ValueError, match="max_iter"):
        GaussianMixtureBaseline(max_iter=0)
    with pytest.raises(ValueError, match="validation_fraction"):
        GaussianMixtureBaseline(validation_fraction=1.0)
    with pytest.raises(ValueError, match="fewer than components=5"):
        GaussianMixtureBaseline(5).fit(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="X_val must have 2 features"):
        GaussianMixtureBaseline().fit(np.zeros((30, 2)), X_val=np.zeros((5, 3)))


# ------------------------------------------------------------- held-out comparisons (issue 19)


def test_gaussian_held_out_score_is_conditional_on_context_and_per_cell_on_integers():
    from normflows_sci.baselines import GaussianBaseline, gaussian_held_out_score

    rng = np.random.default_rng(5)
    x = rng.normal(size=6000)
    table = np.column_stack([x, 2.0 * x + 0.5 * rng.normal(size=6000)])
    train, test = table[:5000], table[5000:]
    conditional = gaussian_held_out_score(train, test, context=[0])
    # y | x ~ N(2x, 0.25): mean log-density -0.5 log(2 pi 0.25) - 0.5
    assert conditional == pytest.approx(-0.5 * np.log(2 * np.pi * 0.25) - 0.5, abs=0.05)
    joint = gaussian_held_out_score(train, test)
    assert joint - conditional == pytest.approx(-0.5 * np.log(2 * np.pi) - 0.5, abs=0.05)
    counts = np.column_stack([x, rng.poisson(3.0, size=6000)])
    per_cell = GaussianBaseline(discrete=[1]).fit(counts[:5000]).score(counts[5000:])
    assert gaussian_held_out_score(counts[:5000], counts[5000:], discrete=[1]) == per_cell


def test_baseline_scores_fit_both_baselines_on_the_same_rows():
    from normflows_sci.baselines import GaussianMixtureBaseline, baseline_scores

    rng = np.random.default_rng(6)
    X = np.concatenate([rng.normal(-4, 1, size=(400, 1)), rng.normal(4, 1, size=(400, 1))])
    X = X[rng.permutation(800)]
    rows = baseline_scores(X[:600], X[600:], random_state=0)
    assert [label.split(" (")[0] for label, _, _ in rows] == ["Gaussian", "Gaussian mixture"]
    mixture = GaussianMixtureBaseline(random_state=0).fit(X[:600])
    assert rows[1][1] == mixture.score(X[600:]) and rows[1][1] > rows[0][1] + 0.3
    assert all(seconds >= 0 for _, _, seconds in rows)


@pytest.mark.parametrize("name", ["components", "max_iter", "n_init"])
def test_mixture_counts_are_checked_by_the_one_integer_check(name):
    """Old code ran ``int(value)`` by hand: ``"three"`` died in ``int()`` with an error naming no
    argument (and ``max_iter=None`` with a TypeError)."""
    from normflows_sci.baselines import GaussianMixtureBaseline

    for bad in ("three", 0, 1.5):
        with pytest.raises(ValueError, match=rf"^{name} must be a positive integer"):
            GaussianMixtureBaseline(**{name: bad})


# ------------------------------------------------------------- cells of a detected lattice (issue 21)


@pytest.mark.parametrize("model", ["gaussian", "mixture"])
def test_cells_of_width_step_are_normalised_and_samples_stay_on_the_lattice(model):
    """Winds in 5-knot steps scored on cells [v, v+5): the probabilities of the lattice points
    sum to 1 (on unit cells, the old only choice, they summed to about 1/5)."""
    from normflows_sci.baselines import GaussianBaseline, GaussianMixtureBaseline

    rng = np.random.default_rng(7)
    winds = 10.0 + 5.0 * rng.poisson(8.0, size=(3000, 1))
    make = {
        "gaussian": lambda: GaussianBaseline(discrete=[0], step=5),
        "mixture": lambda: GaussianMixtureBaseline(2, discrete=[0], step=[5.0], random_state=0),
    }[model]
    fitted = make().fit(winds)
    lattice = np.arange(-200.0, 300.0, 5.0)[:, None]
    assert np.exp(fitted.score_samples(lattice)).sum() == pytest.approx(1.0, abs=1e-6)
    draws = fitted.sample(500, random_state=0)
    assert np.all((draws - 10.0) % 5.0 == 0.0)
    with pytest.raises(ValueError, match=r"step must be a positive number or one per discrete"):
        GaussianBaseline(discrete=[0], step=[5.0, 1.0]).fit(winds)


# ------------------------------------------------------------------------------ level columns


def test_level_columns_are_scored_as_probabilities_of_their_midpoint_cells():
    """A column of levels 0, 1, 4 is scored as the Gaussian's probability of the cells
    [-0.5, 0.5), [0.5, 2.5), [2.5, 5.5) (split at midpoints, end levels centred), fitted to
    the rows spread uniformly over those cells. The old baselines had no such cells: a level
    scored as a density, unbounded as the fit narrows onto it."""
    from scipy.stats import norm

    from normflows_sci.baselines import level_cell_log_prob, level_edges

    rng = np.random.default_rng(0)
    levels = [0.0, 1.0, 4.0]
    X = rng.choice(levels, size=(3000, 1), p=[0.5, 0.3, 0.2])
    gauss = GaussianBaseline(levels={0: levels}).fit(X)
    edges = level_edges(levels)
    np.testing.assert_array_equal(edges, [-0.5, 0.5, 2.5, 5.5])
    # Moments of the rows spread uniformly over their cells.
    centres = np.array([0.0, 1.5, 4.0])[np.searchsorted(levels, X[:, 0])]
    widths = np.diff(edges)[np.searchsorted(levels, X[:, 0])]
    assert gauss.mean_[0] == pytest.approx(centres.mean(), rel=1e-12)
    variance = centres.var() + (widths**2).mean() / 12.0
    assert gauss.covariance_[0, 0] == pytest.approx(variance, rel=1e-5)
    cdf = norm(gauss.mean_[0], np.sqrt(gauss.covariance_[0, 0])).cdf(edges)
    scores = gauss.score_samples(np.array(levels)[:, None])
    np.testing.assert_allclose(np.exp(scores), np.diff(cdf), rtol=1e-6)
    # The same cells for a model of another package, given only its log-density.
    other, _ = level_cell_log_prob(gauss._log_density, np.array(levels)[:, None], {0: levels})
    np.testing.assert_array_equal(other, scores)
    draws = gauss.sample(2000, random_state=0)
    assert set(np.unique(draws)) == set(levels)
    with pytest.raises(ValueError, match=r"column 0 holds 2.0 \(row 0\), not one of its levels"):
        gauss.score_samples(np.array([[2.0]]))


def test_mixture_with_a_level_column_cannot_collapse_onto_the_levels():
    """An atom at 0 (half the rows) next to a continuous column: fitted on the raw values a
    mixture puts a near-singular component on the atom and its score there grows without
    bound; scored per level cell it is a probability (at most 1)."""
    rng = np.random.default_rng(1)
    rate = rng.choice([0.0, 2.5, 3.1], size=1500, p=[0.5, 0.3, 0.2])
    X = np.column_stack([rate, rate + rng.normal(size=1500)])
    levels = {0: [0.0, 2.5, 3.1]}
    gmm = GaussianMixtureBaseline(levels=levels, random_state=0).fit(X[:1000])
    raw = GaussianMixtureBaseline(random_state=0).fit(X[:1000])
    assert raw.score(X[1000:]) > gmm.score(X[1000:]) + 3.0  # the spike's "win"
    # Per cell: the level column's probability times a density of the other column, which
    # integrates to at most 1 over the other column.
    grid = np.linspace(-8.0, 12.0, 2001)
    rows = np.array([[r, y] for r in levels[0] for y in grid])
    mass = np.exp(gmm.score_samples(rows)).sum() * (grid[1] - grid[0])
    assert 0.95 < mass <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="both discrete and a level column"):
        GaussianBaseline(discrete=[0], levels={0: [0.0, 1.0]}).fit(np.zeros((3, 1)))
    with pytest.raises(ValueError, match="distinct finite numbers"):
        GaussianBaseline(levels={0: [0.0, 0.0]}).fit(np.zeros((3, 1)))
