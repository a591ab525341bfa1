"""Two-way adapters between nflows and normflows_sci.

Both packages use the same transform convention (``z, logabsdet = t(x, context)``), so the adapters
only translate the edges: exceptions, the base-distribution interface and sample layouts (nflows
returns ``(context_batch, num_samples, ...)``; this package returns ``(num_samples, batch, ...)``).

Example:
    >>> from normflows_sci.flows import NSF
    >>> ours = NSF(2, transforms=1, hidden_features=(8,))
    >>> theirs = to_nflows(ours)          # an nflows.flows.Flow
    >>> x = torch.randn(4, 2)
    >>> torch.allclose(theirs.log_prob(x), ours.log_prob(x))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from normflows_sci.checks import check_num_samples
from normflows_sci.distributions import Distribution
from normflows_sci.flows import Flow
from normflows_sci.transforms import InverseNotAvailable, Transform

try:
    import nflows.distributions as _nd
    import nflows.flows as _nf
    import nflows.nn.nde.made as _nde_made
    import nflows.nn.nets as _nets
    import nflows.transforms as _nt
    import nflows.transforms.made as _made
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "normflows_sci.interop.nflows needs nflows: pip install 'normflows_sci[nflows]'"
    ) from error

__all__ = ["NflowsTransform", "NflowsDistribution", "from_nflows", "to_nflows"]


def _nflows_context_width(module: torch.nn.Module) -> int | None:
    """Context width of an nflows transform, read from the networks inside it (nflows layers
    use a context only through them): a MADE's ``context_layer``, a ``ResidualNet``'s
    ``context_features``, 0 for networks and layers without one. ``None`` when it cannot be
    read: code outside nflows and torch (its use of a context is unknown), convolutional
    networks (context channels, not features) or networks of different widths."""
    if isinstance(module, (_made.MADE, _nde_made.MADE)):
        layer = getattr(module, "context_layer", None)
        return 0 if layer is None else layer.in_features
    if isinstance(module, _nets.ResidualNet):
        return module.context_features or 0
    if isinstance(module, _nets.ConvResidualNet):
        return None
    if not type(module).__module__.startswith(("nflows.", "torch.nn.")):
        return None
    widths = {_nflows_context_width(child) for child in module.children()}
    if None in widths:
        return None
    widths.discard(0)
    if len(widths) > 1:
        return None
    return widths.pop() if widths else 0


class NflowsTransform(Transform):
    """An nflows transform used as a normflows_sci transform.

    nflows' ``InverseNotAvailable`` is re-raised as
    :class:`~normflows_sci.transforms.InverseNotAvailable`.

    ``context_features`` is the context width read from the wrapped layer's networks (MADE
    context layers, ``ResidualNet``), so a :class:`~normflows_sci.flows.Flow` containing it
    checks contexts; ``None`` when it cannot be read (a custom network inside), and then the
    flow checks the context only if given ``context_features`` itself.

    Example:
        >>> import nflows.transforms
        >>> t = NflowsTransform(nflows.transforms.PointwiseAffineTransform(shift=1.0, scale=2.0))
        >>> z, logabsdet = t(torch.tensor([[1.0, 2.0]]))  # z = 2 x + 1, log|det| = 2 log 2
        >>> z.tolist(), round(logabsdet.item(), 4), isinstance(t, Transform)
        ([[3.0, 5.0]], 1.3863, True)
        >>> maf = nflows.transforms.MaskedAffineAutoregressiveTransform(2, 8, context_features=3)
        >>> NflowsTransform(maf).context_features, t.context_features
        (3, 0)
    """

    def __init__(self, transform: _nt.Transform):
        super().__init__()
        self.wrapped = transform
        self.context_features = _nflows_context_width(transform)

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.wrapped(inputs, context=context)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        try:
            return self.wrapped.inverse(inputs, context=context)
        except _nt.InverseNotAvailable as error:
            raise InverseNotAvailable(str(error)) from error


class NflowsDistribution(Distribution):
    """An nflows distribution used as a normflows_sci base distribution.

    Sampling with a ``generator`` draws a seed from it and samples under that seed (nflows takes no
    generator), so results are reproducible. Samples follow the module's dtype and device like
    the other bases: nflows draws its noise in torch's default dtype, so after ``.double()`` the
    draws are converted (a float32 default gives float64 samples of float32 resolution, about 7
    digits); ``num_samples=0`` gives an empty batch.

    Args:
        distribution: the nflows distribution.
        event_shape: shape of one sample; inferred from nflows' ``StandardNormal`` and similar
            distributions that store it.

    Example:
        >>> import nflows.distributions
        >>> base = NflowsDistribution(nflows.distributions.StandardNormal([2]))
        >>> base.event_shape, round(base.log_prob(torch.zeros(1, 2)).item(), 4)
        (torch.Size([2]), -1.8379)
        >>> def draw():
        ...     return base.sample(3, generator=torch.Generator().manual_seed(0))
        >>> torch.equal(draw(), draw())  # reproducible through the generator
        True
    """

    def __init__(self, distribution: _nd.Distribution, event_shape=None):
        if event_shape is None:
            event_shape = getattr(distribution, "_shape", None)
        if event_shape is None:
            raise ValueError(
                f"event_shape is required: cannot infer it from {type(distribution).__name__}"
            )
        super().__init__(tuple(event_shape))
        self.wrapped = distribution

    def log_prob(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        return self.wrapped.log_prob(inputs, context=context)

    def sample(self, num_samples, context=None, *, generator=None):
        """``(num_samples, *event_shape)`` draws; with a ``context``, one per context row
        (``num_samples`` must equal its row count)."""
        num_samples = check_num_samples(num_samples)
        if context is not None and context.shape[0] != num_samples:
            raise ValueError(
                f"context must have num_samples={num_samples} rows (one sample per row), got "
                f"{context.shape[0]}"
            )
        anchor = self._anchor
        if num_samples == 0:  # nflows rejects zero draws
            return anchor.new_zeros((0, *self.event_shape))

        def draw():
            if context is None:
                return self.wrapped.sample(num_samples)
            return self.wrapped.sample(1, context=context)[:, 0]

        if generator is None:
            samples = draw()
        else:
            seed = int(torch.randint(2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                samples = draw()
        return samples.to(dtype=anchor.dtype, device=anchor.device)

    def _sample(self, num_samples, generator):
        return self.sample(num_samples, None, generator=generator)


class _OurTransformInNflows(_nt.Transform):
    def __init__(self, transform: Transform):
        super().__init__()
        self.wrapped = transform

    def forward(self, inputs, context=None):
        return self.wrapped(inputs, context)

    def inverse(self, inputs, context=None):
        try:
            return self.wrapped.inverse(inputs, context)
        except InverseNotAvailable as error:
            raise _nt.InverseNotAvailable(str(error)) from error


class _OurDistributionInNflows(_nd.Distribution):
    def __init__(self, distribution: Distribution):
        super().__init__()
        self.wrapped = distribution
        self._shape = distribution.event_shape

    def _log_prob(self, inputs, context):
        return self.wrapped.log_prob(inputs, context)

    def _sample(self, num_samples, context):
        if context is None:
            return self.wrapped.sample(num_samples)
        batch = context.shape[0]
        # nflows lays samples out as (context_batch, num_samples, ...), context rows repeated.
        repeated = context.repeat_interleave(num_samples, dim=0)
        samples = self.wrapped.sample(batch * num_samples, repeated)
        return samples.reshape(batch, num_samples, *self._shape)


def from_nflows(obj, *, event_shape=None):
    """Wrap an nflows ``Flow``, ``Transform`` or ``Distribution`` as the matching type here.

    Args:
        obj: the nflows object.
        event_shape: needed for a distribution (or flow) whose event shape nflows does not store.

    Returns:
        A :class:`~normflows_sci.flows.Flow`, :class:`NflowsTransform` or
        :class:`NflowsDistribution` wrapping ``obj`` (parameters shared, not copied).

    Example:
        >>> import nflows.distributions, nflows.flows, nflows.transforms
        >>> theirs = nflows.flows.Flow(nflows.transforms.PointwiseAffineTransform(1.0, 2.0),
        ...                            nflows.distributions.StandardNormal([2]))
        >>> ours = from_nflows(theirs)  # a normflows_sci Flow
        >>> x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(ours.log_prob(x), theirs.log_prob(x))
        True
        >>> ours.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 2])
    """
    if isinstance(obj, _nf.Flow):
        base = NflowsDistribution(obj._distribution, event_shape)
        embedding = obj._embedding_net
        if isinstance(embedding, torch.nn.Identity):
            embedding = None
        return Flow(NflowsTransform(obj._transform), base, embedding=embedding)
    if isinstance(obj, _nt.Transform):
        return NflowsTransform(obj)
    if isinstance(obj, _nd.Distribution):
        return NflowsDistribution(obj, event_shape)
    raise TypeError(
        f"obj must be an nflows Flow, Transform or Distribution, got {type(obj).__name__}"
    )


def to_nflows(obj):
    """Wrap a normflows_sci ``Flow``, ``Transform`` or ``Distribution`` as the nflows type.

    Parameters are shared, not copied: training the wrapper trains the original.

    Example:
        >>> import nflows.transforms
        >>> from normflows_sci.transforms import ReversePermutation
        >>> reverse = to_nflows(ReversePermutation(3))  # an nflows Transform
        >>> doubling = nflows.transforms.PointwiseAffineTransform(scale=2.0)
        >>> theirs = nflows.transforms.CompositeTransform([reverse, doubling])
        >>> z, logabsdet = theirs(torch.tensor([[1.0, 2.0, 3.0]]))
        >>> z.tolist(), round(logabsdet.item(), 4)  # reversed, then doubled: log|det| = 3 log 2
        ([[6.0, 4.0, 2.0]], 2.0794)
    """
    if isinstance(obj, Flow):
        return _nf.Flow(
            _OurTransformInNflows(obj.transform),
            _OurDistributionInNflows(obj.base),
            embedding_net=obj.embedding,
        )
    if isinstance(obj, Transform):
        return _OurTransformInNflows(obj)
    if isinstance(obj, Distribution):
        return _OurDistributionInNflows(obj)
    raise TypeError(
        f"obj must be a normflows_sci Flow, Transform or Distribution, got {type(obj).__name__}"
    )
