"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny tensors run fastest on one thread; several threads on a busy 2-core machine are ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
