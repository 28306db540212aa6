-- Customers as the engine reads them. Repoint at your own table; keep the column names.
-- signup_at is a UTC instant; timezone an IANA name (unknown names fall back to UTC);
-- birth_date a calendar date; loyalty_points the current balance.
SELECT
    id AS customer_id,
    email,
    first_name,
    last_name,
    locale,
    timezone,
    birth_date,
    signup_at,
    marketing_consent,
    loyalty_points
FROM customers
