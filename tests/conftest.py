import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # tests are small; one thread avoids oversubscription on shared cores

from linear_harness import make_problem  # noqa: E402


@pytest.fixture
def linear_problem():
    return make_problem()
