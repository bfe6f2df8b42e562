import pytest
import torch

# Small tensors run 10-50x slower when torch threads are oversubscribed on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
