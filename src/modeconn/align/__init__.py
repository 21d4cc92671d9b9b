"""Permutation alignment for any model: automatic specs, weight/activation/STE matching, merging."""

from .lap import WarmLAP, certify, linear_assignment
from .matching import (
    Merged,
    WeightMatcher,
    activation_matching,
    batch_statistics,
    mean_params,
    merge_many,
    ste_epochs,
    ste_matching,
    ste_mm,
    weight_matching,
)
from .methods import METHODS, find_permutation
from .spec import Permutation, PermutationSpec, check_spec
from .trace import auto_spec

__all__ = ["METHODS", "Merged", "Permutation", "PermutationSpec", "WarmLAP", "WeightMatcher",
           "activation_matching", "auto_spec", "batch_statistics", "certify", "check_spec",
           "find_permutation", "linear_assignment", "mean_params", "merge_many", "ste_epochs",
           "ste_matching", "ste_mm", "weight_matching"]
