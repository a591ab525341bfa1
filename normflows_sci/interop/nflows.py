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

from normflows_sci.distributions import Distribution
from normflows_sci.flows import Flow
from normflows_sci.transforms import InverseNotAvailable, Transform

try:
    import nflows.distributions as _nd
    import nflows.flows as _nf
    import nflows.transforms as _nt
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "normflows_sci.interop.nflows needs nflows: pip install 'normflows_sci[nflows]'"
    ) from error

__all__ = ["NflowsTransform", "NflowsDistribution", "from_nflows", "to_nflows"]


class NflowsTransform(Transform):
    """An nflows transform used as a normflows_sci transform.

    nflows' ``InverseNotAvailable`` is re-raised as
    :class:`~normflows_sci.transforms.InverseNotAvailable`.

    Example:
        >>> import nflows.transforms
        >>> t = NflowsTransform(nflows.transforms.PointwiseAffineTransform(shift=1.0, scale=2.0))
        >>> z, logabsdet = t(torch.tensor([[1.0, 2.0]]))  # z = 2 x + 1, log|det| = 2 log 2
        >>> z.tolist(), round(logabsdet.item(), 4), isinstance(t, Transform)
        ([[3.0, 5.0]], 1.3863, True)
    """

    def __init__(self, transform: _nt.Transform):
        super().__init__()
        self.wrapped = transform

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
    generator), so results are reproducible.

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
        def draw():
            if context is None:
                return self.wrapped.sample(num_samples)
            # One sample per context row, as this package's bases do.
            return self.wrapped.sample(1, context=context)[:, 0]

        if generator is None:
            return draw()
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return draw()

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
