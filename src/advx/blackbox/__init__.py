"""Black-box access and attacks: query-only models (:class:`QueryModel`) and the
substitute-model attack of Papernot et al. (2017). ZOO lives in :mod:`advx.attacks.zoo`."""

from .query import OUTPUTS, BudgetExceeded, QueryModel, as_query_model, to_log_probabilities
from .substitute import Substitute, jacobian_augmentation, train_substitute

__all__ = [
    "OUTPUTS",
    "BudgetExceeded",
    "QueryModel",
    "Substitute",
    "as_query_model",
    "jacobian_augmentation",
    "to_log_probabilities",
    "train_substitute",
]
