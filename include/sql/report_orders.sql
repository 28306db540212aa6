-- Orders that count as revenue for the reports: conversions after a send, retention KPIs and
-- lifetime value. Adapt the table and the status filter to your own warehouse; keep the four
-- output columns in this order, placed_at a UTC instant and one currency for all amounts.
-- Cancelled and returned orders are not revenue.
SELECT
    customer_id,
    placed_at,
    amount,
    currency
FROM orders
WHERE status NOT IN ('cancelled', 'returned')
