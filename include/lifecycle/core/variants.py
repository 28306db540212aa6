"""Which variant of an A/B/n test each customer gets, and who is in an experiment's test slice.

Both are keyed hashes of the customer id like the holdout (`segments.customer_hash`): the same
customer gets the same variant in every run and chunking, and the keys differ per campaign and
from the holdout's, so assignments are independent between campaigns and of the holdout.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lifecycle.core.campaigns import CampaignSpec
from lifecycle.core.segments import customer_hash

_UNIT = float(2**53)


def _uniform(customer_ids: pd.Series, key: str) -> np.ndarray:
    """A number in [0, 1) per customer, uniform over customers."""
    return (customer_hash(customer_ids, key) >> np.uint64(11)).astype(np.float64) / _UNIT


def assign(customer_ids: pd.Series, spec: CampaignSpec) -> pd.Series:
    """Each customer's variant id (None when the spec has no variants), by the spec's weights."""
    if not spec.variants:
        return pd.Series([None] * len(customer_ids), index=customer_ids.index, dtype=object)
    draw = _uniform(customer_ids, f"{spec.id}/variant") * 100
    edges = np.cumsum([variant.weight for variant in spec.variants])
    # weights sum to 100 up to float error: the last edge takes what rounding leaves
    chosen = np.minimum(np.searchsorted(edges, draw, side="right"), len(edges) - 1)
    ids = np.array([variant.id for variant in spec.variants], dtype=object)
    return pd.Series(ids[chosen], index=customer_ids.index, dtype=object)


def in_test_slice(customer_ids: pd.Series, spec: CampaignSpec) -> pd.Series:
    """True for the customers of the experiment's test slice (`test_percent` of them)."""
    if spec.experiment is None:
        return pd.Series(False, index=customer_ids.index)
    draw = _uniform(customer_ids, f"{spec.id}/test") * 100
    return pd.Series(draw < spec.experiment.test_percent, index=customer_ids.index)
