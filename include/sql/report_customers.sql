-- Customers and when they signed up, for the lifetime value by signup cohort.
-- Adapt the table to your own warehouse; keep the two output columns.
SELECT
    id AS customer_id,
    signup_at
FROM customers
