"""TarFlow: a Flow of Transformer autoregressive blocks, plus its sampling and denoising helpers.

* :func:`TarFlow` builds the flow (alternating token orders between blocks).
* :func:`sample_tarflow` samples with a chosen inversion (``"kv_cache"``, ``"jacobi"``,
  ``"naive"``) and reports the iterations used; it can also denoise.
* :func:`gaussian_noise` is a ``transform_batch`` for :func:`normflows_sci.training.fit_flow` that
  adds Gaussian noise of standard deviation ``sigma`` to every training batch (noise augmentation).
* :func:`score_denoise` moves samples of the noisy model one Tweedie step towards the clean data:
  ``x + sigma^2 * grad_x log p(x)``, the gradient taken by autograd through ``flow.log_prob``.

With noise augmentation the flow models the data convolved with ``N(0, sigma^2 I)``: its
``log_prob`` is the density of noisy data, and by Tweedie's formula
``E[x_clean | x_noisy] = x_noisy + sigma^2 grad log p_sigma(x_noisy)``, so one denoising step turns
samples of ``p_sigma`` into (posterior-mean) estimates of clean samples.

References:
    Zhai et al. (2024), "Normalizing Flows are Capable Generative Models" (TarFlow: noise
    augmentation and score-based denoising); Efron (2011), "Tweedie's Formula and Selection Bias".
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from normflows_sci.checks import check_int, check_num_samples
from normflows_sci.distributions import Distribution, StandardNormal
from normflows_sci.flows.base import Flow
from normflows_sci.transforms.base import CompositeTransform
from normflows_sci.transforms.elementwise import ElementwiseMap, pop_map_options
from normflows_sci.transforms.tarflow import (
    InverseInfo,
    TarFlowBlock,
    TarFlowTransform,
    block_map,
)

__all__ = ["TarFlow", "sample_tarflow", "gaussian_noise", "score_denoise"]


def TarFlow(
    features: int,
    context_features: int = 0,
    *,
    blocks: int = 4,
    layers_per_block: int = 2,
    width: int = 128,
    heads: int = 4,
    token_size: int = 1,
    map: str | ElementwiseMap | None = None,
    base: Distribution | None = None,
    embedding: nn.Module | None = None,
    **options,
) -> Flow:
    """Transformer autoregressive flow: ``blocks`` TarFlow blocks with alternating token orders.

    Args:
        features: data dimension ``D``, a multiple of ``token_size``.
        context_features: width of the context the blocks see (the embedding's output width when
            ``embedding`` is given); 0 for unconditional flows.
        blocks: number of TarFlow blocks; odd-numbered ones read the tokens in reverse.
        layers_per_block: Transformer layers in each block.
        width: Transformer width (divisible by ``heads``).
        heads: attention heads.
        token_size: features per token: 1 (one token per feature, tabular data), 3 (one particle
            in 3-D per token, data ``(x0, y0, z0, x1, ...)``) or any group size.
        map: per-token map, ``"affine"`` (default) or ``"spline"`` (rational-quadratic with
            identity tails beyond ``tail_bound``), or an ``ElementwiseMap`` shared by every
            block (``transform=``, its former name, also works).
        base: base distribution (default standard normal).
        embedding: network applied to the context first.
        **options: the blocks' other options (see
            :class:`~normflows_sci.transforms.tarflow.TarFlowBlock`): ``mlp_ratio``, ``dropout``,
            the map shorthands (``bins``, ``tail_bound``, ... for a spline, ``max_log_scale``),
            ``inversion`` (how ``flow.sample`` inverts: ``"kv_cache"``, the default, exact;
            ``"jacobi"``, parallel fixed-point; ``"naive"``), ``tol``, ``max_iterations``,
            ``chunk_size``.

    Returns:
        A :class:`Flow` whose transform is a :class:`~normflows_sci.transforms.TarFlowTransform`.

    References:
        Zhai et al. (2024), "Normalizing Flows are Capable Generative Models".

    Example:
        >>> flow = TarFlow(6, token_size=3, blocks=2, layers_per_block=1, width=16, heads=2)
        >>> flow.log_prob(torch.zeros(2, 6)).shape
        torch.Size([2])
        >>> flow.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 6])
    """
    blocks = check_int("blocks", blocks)
    layer_map = block_map(
        map,
        options.pop("transform", None),
        **pop_map_options(options, "spline"),
        **pop_map_options(options, "affine"),
    )
    layers = [
        TarFlowBlock(
            features,
            token_size=token_size,
            map=layer_map,
            context_features=context_features,
            width=width,
            layers=layers_per_block,
            heads=heads,
            reverse=i % 2 == 1,
            **options,
        )
        for i in range(int(blocks))
    ]
    if base is None:
        base = StandardNormal(features)
    elif base.event_shape.numel() != features:
        raise ValueError(
            f"base must have {features} features, got event_shape {tuple(base.event_shape)}"
        )
    return Flow(TarFlowTransform(layers), base, embedding=embedding)


def _invert(transform, latent: Tensor, context: Tensor | None, options: dict):
    """Invert ``transform``, passing ``options`` to every TarFlow stack it contains."""
    if isinstance(transform, TarFlowTransform):
        x, _, info = transform.invert(latent, context, **options)
        return x, [info]
    if isinstance(transform, CompositeTransform):
        infos = []
        for step in reversed(list(transform)):
            if isinstance(step, (TarFlowTransform, CompositeTransform)):
                latent, step_infos = _invert(step, latent, context, options)
                infos += step_infos
            else:
                latent, _ = step.inverse(latent, context)
        return latent, infos
    latent, _ = transform.inverse(latent, context)
    return latent, []


def sample_tarflow(
    flow: Flow,
    num_samples: int,
    context: Tensor | None = None,
    *,
    method: str | None = None,
    tol: float | None = None,
    max_iterations: int | None = None,
    chunk_size: int | None = None,
    denoise_sigma: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, InverseInfo]:
    """Sample a flow holding TarFlow blocks with a chosen inversion, and report what it took.

    The latent draws are those of ``flow.sample`` with the same ``generator`` state, so methods
    can be compared sample by sample. ``None`` options take the blocks' defaults.

    Args:
        flow: a :class:`Flow` whose transform is a ``TarFlowTransform`` or a composite containing
            one (e.g. preprocessing + TarFlow).
        num_samples: samples per context row.
        context: ``(batch, ...)`` raw context (before the flow's embedding) or None.
        method: ``"kv_cache"``, ``"jacobi"`` or ``"naive"``.
        tol, max_iterations, chunk_size: Jacobi options.
        denoise_sigma: if given, finish with one :func:`score_denoise` step at this noise level.
        generator: random generator of the latent draws.

    Returns:
        ``(samples, info)``: samples ``(num_samples, [batch,] features)`` and the
        :class:`~normflows_sci.transforms.tarflow.InverseInfo` of the (last) TarFlow stack.

    Example:
        >>> flow = TarFlow(4, blocks=2, layers_per_block=1, width=16, heads=2)
        >>> x, info = sample_tarflow(flow, 3, method="jacobi", tol=1e-6)
        >>> x.shape, info.method, info.iterations <= 8
        (torch.Size([3, 4]), 'jacobi', True)
    """
    num_samples = check_num_samples(num_samples)
    options = dict(method=method, tol=tol, max_iterations=max_iterations, chunk_size=chunk_size)
    raw = None
    flow._check_context(context, None)
    if context is None:
        latent = flow.base.sample(num_samples, generator=generator)
        embedded, lead = None, (num_samples,)
    else:
        batch = context.shape[0]
        raw = context.repeat(num_samples, *([1] * (context.ndim - 1)))
        embedded = raw if flow.embedding is None else flow.embedding(raw)
        latent = flow.base.sample(num_samples * batch, embedded, generator=generator)
        lead = (num_samples, batch)
    samples, infos = _invert(flow.transform, latent, embedded, options)
    if not infos:
        raise TypeError("flow holds no TarFlowTransform: use flow.sample instead")
    if denoise_sigma is not None:
        samples = score_denoise(flow, samples, denoise_sigma, raw)
    return samples.reshape(*lead, *flow.event_shape), infos[-1]


def gaussian_noise(sigma: float) -> Callable[[Tensor, torch.Generator], Tensor]:
    """Noise augmentation for training: ``batch -> batch + sigma * N(0, I)``.

    Pass the result as ``transform_batch`` to :func:`normflows_sci.training.fit_flow`; the flow then
    models the data convolved with ``N(0, sigma^2 I)`` (see :func:`score_denoise` for the way back).

    Example:
        >>> add = gaussian_noise(0.1)
        >>> noisy = add(torch.zeros(1000, 2), torch.Generator().manual_seed(0))
        >>> round(float(noisy.std()), 1)
        0.1
    """
    if not sigma >= 0:
        raise ValueError(f"sigma must be a non-negative number, got {sigma!r}")

    def add_noise(batch: Tensor, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(
            batch.shape, generator=generator, dtype=batch.dtype, device=batch.device
        )
        return batch + sigma * noise

    return add_noise


def score_denoise(flow, samples: Tensor, sigma: float, context: Tensor | None = None) -> Tensor:
    """One score-based (Tweedie) denoising step: ``x + sigma^2 * grad_x log p(x)``.

    Args:
        flow: anything with ``log_prob(x, context)`` (a flow trained on data with noise ``sigma``).
        samples: ``(batch, *event)`` noisy samples.
        sigma: standard deviation of the training noise.
        context: ``(batch, ...)`` context rows matching ``samples``, or None.

    Returns:
        Denoised samples shaped like ``samples`` (detached from the graph).

    References:
        Efron (2011), "Tweedie's Formula and Selection Bias"; Zhai et al. (2024), TarFlow.

    Example:
        >>> flow = TarFlow(2, blocks=1, layers_per_block=1, width=8, heads=2)  # standard normal
        >>> score_denoise(flow, torch.tensor([[1.0, -2.0]]), 0.5).tolist()  # x - 0.25 x
        [[0.75, -1.5]]
    """
    if not sigma >= 0:
        raise ValueError(f"sigma must be a non-negative number, got {sigma!r}")
    x = samples.detach().requires_grad_(True)
    with torch.enable_grad():
        log_prob = flow.log_prob(x, context)
        (score,) = torch.autograd.grad(log_prob.sum(), x)
    return samples.detach() + sigma**2 * score
