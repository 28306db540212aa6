-- Orders that count as revenue for the reports: conversions after a send, retention KPIs and
-- lifetime value. Adapt the table and the status filter to your own warehouse; keep the four
-- output columns and the `since` parameter (a UTC instant: only orders placed at or after it).
-- Cancelled and returned orders are not revenue.
SELECT
    customer_id,
    placed_at,
    amount,
    currency
FROM orders
WHERE status NOT IN ('cancelled', 'returned')
  AND placed_at >= :since
