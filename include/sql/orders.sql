-- Orders as the engine reads them. Repoint at your own table; keep the column names.
-- placed_at / delivered_at are UTC instants; status is one of placed, delivered,
-- cancelled, returned (cancelled orders are ignored, returned ones do not count as spend).
SELECT
    id AS order_id,
    customer_id,
    placed_at,
    delivered_at,
    amount,
    currency,
    status
FROM orders
