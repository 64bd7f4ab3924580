"""Suite-wide guards: no test may leak global torch state, or a SIGINT handler, into another."""

import signal

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Restore the default dtype, the thread count and the SIGINT handler after every test.

    A test that sets ``torch.set_default_dtype(torch.float64)`` and fails
    before resetting it would otherwise turn every later float32 test into a
    float64 one; a library that installs its own SIGINT handler (or ignores the
    signal) would keep a later Ctrl-C test from seeing ``KeyboardInterrupt``.
    """
    dtype = torch.get_default_dtype()
    threads = torch.get_num_threads()
    sigint = signal.getsignal(signal.SIGINT)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    if sigint is not None:
        signal.signal(signal.SIGINT, sigint)


@pytest.fixture
def one_thread():
    """One torch thread: 2-thread BLAS on a shared 2-core machine is up to 10x slower
    for tiny sizes (restored by ``_restore_torch_globals``)."""
    torch.set_num_threads(1)


@pytest.fixture
def sigkill_when():
    """``sigkill_when(proc, ready, timeout=180)``: SIGKILL the subprocess ``proc`` as soon
    as ``ready()`` is true; fails if it ended first or did not die by SIGKILL."""
    import os
    import signal
    import time

    def kill(proc, ready, timeout: float = 180) -> None:
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if ready():
                    break
                time.sleep(0.01)
            assert proc.poll() is None, "the process finished before it could be killed"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL

    return kill
