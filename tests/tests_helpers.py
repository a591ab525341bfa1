"""Numerical helpers shared by the tests."""

from __future__ import annotations

import torch

from conftest import perturb

__all__ = ["Interrupting", "WithoutDivergenceHook", "damaged_copy", "grid_integral", "perturb"]


def grid_integral(density, *, bound: float, points: int, dtype=torch.float64) -> float:
    """Midpoint-rule integral of ``density: (n, 2) -> (n,)`` over ``[-bound, bound]^2``."""
    step = 2 * bound / points
    axis = -bound + step * (torch.arange(points, dtype=dtype) + 0.5)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        values = torch.cat([density(chunk) for chunk in grid.split(65536)])
    return float(values.sum() * step * step)


class WithoutDivergenceHook(torch.nn.Module):
    """A velocity field without its divergence hook: a flow using it takes the autograd
    divergence (no checkpointing), the reference for the hooked one."""

    def __init__(self, field):
        super().__init__()
        self.field = field

    def forward(self, x, t, context=None):
        return self.field(x, t, context)


class Interrupting:
    """Wraps an MCMC kernel and raises ``KeyboardInterrupt`` after ``after`` steps (an
    interrupted job)."""

    def __init__(self, kernel, after):
        self.kernel, self.after, self.count = kernel, after, 0

    def __getattr__(self, name):
        return getattr(self.kernel, name)

    def step(self, state, generator=None):
        self.count += 1
        if self.count > self.after:
            raise KeyboardInterrupt
        return self.kernel.step(state, generator)


def damaged_copy(path, out, change) -> None:
    """Write to ``out`` the model file ``path`` with ``change(config)`` applied to its JSON config
    (the tensors copied unchanged): a file damaged the way a test needs."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    change(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
