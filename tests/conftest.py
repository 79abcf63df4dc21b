import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, os.cpu_count() or 1))

from linear_harness import make_problem  # noqa: E402


@pytest.fixture
def linear_problem():
    return make_problem()
