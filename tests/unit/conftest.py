"""Unit tests run tiny models: they gain nothing from threads, and on shared cores two OpenMP threads make
them ~20× slower, so each unit-test module runs single-threaded."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
