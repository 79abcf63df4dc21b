"""Trust-region attack (Yao, Gholami, Xu, Keutzer & Mahoney, "Trust Region Based Adversarial
Attack on Neural Networks", CVPR 2019): first order (L2, Linf) and second order (L2, the
trust-region subproblem solved by Lanczos / GLTR or Steihaug-Toint truncated conjugate gradients
on Hessian-vector products).

Modules: ``attack`` (the public function: checks and targets), ``loop`` (the iterations of
Algorithm 1 and their settings), ``krylov`` (the subproblem solvers), ``refine`` (the optional
boundary refinement).
"""

from .attack import SOLVERS, TARGET_MODES, trust_region
from .krylov import gltr, lanczos, steihaug_cg
from .loop import TrustRegionSettings, run_iterations, update_radius

# private pieces the tests reach
from .loop import _overshoot as _overshoot
from .refine import _project_to_linear_boundary as _project_to_linear_boundary
from .refine import _refine as _refine

__all__ = [
    "SOLVERS",
    "TARGET_MODES",
    "TrustRegionSettings",
    "gltr",
    "lanczos",
    "run_iterations",
    "steihaug_cg",
    "trust_region",
    "update_radius",
]
