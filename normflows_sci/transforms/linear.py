"""Linear transforms: permutations and the LU-decomposed invertible linear map."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normflows_sci.checks import check_features
from normflows_sci.transforms.base import Transform

__all__ = ["Permutation", "ReversePermutation", "RandomPermutation", "LULinear"]


class Permutation(Transform):
    """Reorders features: ``outputs[:, i] = inputs[:, permutation[i]]``; logabsdet 0.

    Args:
        permutation: a permutation of ``range(features)``.

    Example:
        >>> t = Permutation([2, 0, 1])
        >>> z, logabsdet = t(torch.tensor([[10.0, 20.0, 30.0]]))
        >>> z.tolist(), logabsdet.tolist()
        ([[30.0, 10.0, 20.0]], [0.0])
        >>> t.inverse(z)[0].tolist()
        [[10.0, 20.0, 30.0]]
    """

    context_features = 0  # takes no context (Flow checks contexts against this)

    def __init__(self, permutation):
        super().__init__()
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        if permutation.ndim != 1 or not torch.equal(
            permutation.sort().values, torch.arange(len(permutation))
        ):
            raise ValueError(f"permutation must be a permutation of range(n), got {permutation}")
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def _permute(self, inputs: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        check_features(inputs, len(index))
        zeros = torch.zeros(inputs.shape[0], dtype=inputs.dtype, device=inputs.device)
        return inputs.index_select(-1, index), zeros

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._permute(inputs, self.permutation)

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._permute(inputs, self.inverse_permutation)


class ReversePermutation(Permutation):
    """Reverses the feature order.

    Example:
        >>> ReversePermutation(3)(torch.tensor([[1.0, 2.0, 3.0]]))[0].tolist()
        [[3.0, 2.0, 1.0]]
    """

    def __init__(self, features: int):
        super().__init__(torch.arange(features - 1, -1, -1))


class RandomPermutation(Permutation):
    """A random but fixed permutation, reproducible with ``seed``.

    The permutation is drawn once, at construction, and stored in the state dict.

    Example:
        >>> t = RandomPermutation(5, seed=0)
        >>> sorted(t.permutation.tolist())
        [0, 1, 2, 3, 4]
        >>> torch.equal(t.permutation, RandomPermutation(5, seed=0).permutation)
        True
    """

    def __init__(self, features: int, *, seed: int | None = None):
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        super().__init__(torch.randperm(features, generator=generator))


class LULinear(Transform):
    """``z = x W^T + b`` with ``W = L U``: L unit lower-triangular, U upper with positive diagonal.

    The log-determinant is ``sum(log diag U)``, exact and O(D); the inverse is two triangular solves.
    Starts at the identity.

    Args:
        features: ``D``.
        min_diagonal: lower bound on U's diagonal, keeps the map invertible.

    References:
        Kingma, Dhariwal (2018), "Glow"; Durkan et al. (2019), "Neural Spline Flows".

    Example:
        >>> t = LULinear(3)  # the identity until trained; perturb it to see a general map
        >>> generator = torch.Generator().manual_seed(0)
        >>> with torch.no_grad():
        ...     for parameter in t.parameters():
        ...         _ = parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
        >>> x = torch.randn(4, 3, generator=generator)
        >>> z, logabsdet = t(x)
        >>> torch.allclose(logabsdet, torch.linalg.slogdet(t.weight())[1].expand(4), atol=1e-5)
        True
        >>> torch.allclose(t.inverse(z)[0], x, atol=1e-5)
        True
    """

    context_features = 0  # takes no context (Flow checks contexts against this)

    def __init__(self, features: int, *, min_diagonal: float = 1e-3):
        super().__init__()
        self.features = features
        self.min_diagonal = min_diagonal
        rows, cols = torch.tril_indices(features, features, offset=-1)
        self.register_buffer("lower_index", rows * features + cols)
        self.register_buffer("upper_index", cols * features + rows)
        num_off = features * (features - 1) // 2
        self.lower_entries = nn.Parameter(torch.zeros(num_off))
        self.upper_entries = nn.Parameter(torch.zeros(num_off))
        self.raw_diagonal = nn.Parameter(
            torch.full((features,), math.log(math.expm1(1.0 - min_diagonal)))
        )
        self.bias = nn.Parameter(torch.zeros(features))

    def _factors(self) -> tuple[Tensor, Tensor, Tensor]:
        d = self.features
        eye = torch.eye(d, dtype=self.bias.dtype, device=self.bias.device)
        flat = torch.zeros(d * d, dtype=self.bias.dtype, device=self.bias.device)
        lower = flat.scatter(0, self.lower_index, self.lower_entries).view(d, d) + eye
        diagonal = F.softplus(self.raw_diagonal) + self.min_diagonal
        upper = flat.scatter(0, self.upper_index, self.upper_entries).view(d, d)
        upper = upper + torch.diag(diagonal)
        return lower, upper, diagonal

    def weight(self) -> Tensor:
        """The matrix ``W = L U``, ``(D, D)``."""
        lower, upper, _ = self._factors()
        return lower @ upper

    def forward(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(inputs, self.features)
        lower, upper, diagonal = self._factors()
        outputs = F.linear(inputs, lower @ upper, self.bias)
        return outputs, diagonal.log().sum().expand(inputs.shape[0])

    def inverse(self, inputs: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_features(inputs, self.features)
        lower, upper, diagonal = self._factors()
        # Rows are samples: X U^T L^T = Z - b, solved right-to-left with two triangular solves.
        shifted = inputs - self.bias
        partial = torch.linalg.solve_triangular(
            lower.T, shifted, upper=True, left=False, unitriangular=True
        )
        outputs = torch.linalg.solve_triangular(upper.T, partial, upper=False, left=False)
        return outputs, (-diagonal.log().sum()).expand(inputs.shape[0])
