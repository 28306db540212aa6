"""RFM scores: recency, frequency and monetary quintiles 1-5 and the named R x F segment.

Scored in the `customer_features` snapshot right after `features.materialize` fills it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sqlalchemy import ColumnElement, Connection, String, and_, case, cast, literal, select, update

from lifecycle.store.schema import customer_features

RFM_SEGMENTS = [
    # (name, recency scores, frequency scores): the usual R x F grid.
    ("Champions", (4, 5), (4, 5)),
    ("Loyal", (3,), (4, 5)),
    ("Potential loyalist", (4, 5), (2, 3)),
    ("New customers", (4, 5), (1,)),
    ("Need attention", (3,), (2, 3)),
    ("About to sleep", (3,), (1,)),
    ("Can't lose them", (1, 2), (5,)),
    ("At risk", (1, 2), (3, 4)),
    ("Hibernating", (2,), (1, 2)),
    ("Lost", (1,), (1, 2)),
]


def score_rfm(conn: Connection) -> None:
    """RFM quintile scores 1-5 among customers with orders, and their named segment.

    A customer's score is 1 + 5 * (customers ranked strictly below) // (customers with
    orders), so ties share a score. pandas finds the four cut points per dimension from three
    narrow columns; one set-based UPDATE applies them.
    """
    f = customer_features.c
    buyers = f.order_count > 0
    dimensions = [-f.days_since_last_order, f.order_count, f.total_spend]
    result = conn.execute(select(*dimensions).where(buyers))
    # Read in chunks into three numeric columns: 24 bytes per customer, never a row list.
    chunks = [pd.DataFrame(rows).to_numpy(dtype=float) for rows in result.partitions(100_000)]
    if not chunks:
        return
    values = np.concatenate(chunks)
    recency, frequency, monetary = (
        _score(column, _cut_points(values[:, i])) for i, column in enumerate(dimensions)
    )
    segment = case(
        *(
            (and_(recency.in_(rs), frequency.in_(fs)), literal(name))
            for name, rs, fs in RFM_SEGMENTS
        )
    )
    conn.execute(
        update(customer_features)
        .where(buyers)
        .values(
            rfm_recency=recency,
            rfm_frequency=frequency,
            rfm_monetary=monetary,
            rfm_score=cast(recency, String) + cast(frequency, String) + cast(monetary, String),
            rfm_segment=segment,
        )
    )


def _cut_points(values: np.ndarray) -> list[float]:
    """For scores 2..5, the smallest value whose score reaches it (higher value, higher score)."""
    ordered = np.sort(values)
    distinct = np.unique(ordered)
    scores = 1 + (5 * np.searchsorted(ordered, distinct, side="left")) // len(ordered)
    return [distinct[scores >= k][0].item() for k in range(2, 6) if (scores >= k).any()]


def _score(column: ColumnElement[float], cuts: list[float]) -> ColumnElement[int]:
    return literal(1) + sum((case((column >= cut, 1), else_=0) for cut in cuts), start=literal(0))
