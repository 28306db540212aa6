-- Orders that count as revenue for the reports: conversions after a send, retention KPIs and
-- lifetime value. Adapt the table and the status filter to your own warehouse; keep the four
-- output columns in this order, placed_at a UTC instant and one currency for all amounts.
-- Cancelled and returned orders are not revenue.
-- Optional: utm_medium, utm_campaign and utm_content, the UTM parameters of the link the order
-- came through (NULL when none). An order with utm_medium 'email' and the utm_campaign of a
-- campaign is attributed to the last email of that campaign the customer clicked before it.
-- If your orders carry no UTM fields, delete those three lines and the comma after currency:
-- every order is then attributed to the last email sent within the conversion window.
SELECT
    customer_id,
    placed_at,
    amount,
    currency,
    utm_medium,
    utm_campaign,
    utm_content
FROM orders
WHERE status NOT IN ('cancelled', 'returned')
