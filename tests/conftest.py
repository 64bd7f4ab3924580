"""Suite-wide guards: no test may leak global torch state into another."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Restore the default dtype and the thread count after every test.

    A test that sets ``torch.set_default_dtype(torch.float64)`` and fails
    before resetting it would otherwise turn every later float32 test into a
    float64 one.
    """
    dtype = torch.get_default_dtype()
    threads = torch.get_num_threads()
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
