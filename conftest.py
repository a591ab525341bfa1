"""Doctest setup: docstring examples may use ``torch`` without importing it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_torch(doctest_namespace):
    doctest_namespace["torch"] = torch
    torch.manual_seed(0)
