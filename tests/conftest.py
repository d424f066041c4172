"""Suite-wide test settings."""
import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_intra_op_thread():
    """The tests' tensors are small (a few thousand 2-D points, tiny networks): intra-op threads only
    add synchronisation, and on a busy 2-core machine their spin-waits made modules 5-10x slower.
    Multi-process tests set one thread in each worker too."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"      # the trainer's thread policy reads it (training.threads = 0)
    yield
    torch.set_num_threads(previous)
