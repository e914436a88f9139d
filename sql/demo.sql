-- Demo data for `pgid dev` and the tests: a small CRM with columns a policy would mask.
CREATE SCHEMA IF NOT EXISTS crm;
CREATE SCHEMA IF NOT EXISTS reporting;

CREATE TABLE IF NOT EXISTS crm.customers (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL,
    ssn         text,
    card_number text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS crm.orders (
    id          serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES crm.customers (id),
    amount      numeric(10, 2) NOT NULL,
    status      text NOT NULL DEFAULT 'new',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS crm.tickets (
    id          serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES crm.customers (id),
    subject     text NOT NULL,
    status      text NOT NULL DEFAULT 'open'
);

CREATE TABLE IF NOT EXISTS crm.notes (
    id          serial PRIMARY KEY,
    customer_id integer REFERENCES crm.customers (id),
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS reporting.daily_revenue (
    day     date PRIMARY KEY,
    revenue numeric(12, 2) NOT NULL
);

INSERT INTO crm.customers (name, email, ssn, card_number)
SELECT v.name, v.email, v.ssn, v.card
FROM (VALUES
    ('Ada Lovelace',   'ada@example.com',    '078-05-1120', '4111111111111111'),
    ('Alan Turing',    'alan@example.com',   '219-09-9999', '5500005555555559'),
    ('Grace Hopper',   'grace@example.com',  '457-55-5462', '340000000000009'),
    ('Edsger Dijkstra','edsger@example.com', '123-45-6789', '6011000000000004')
) AS v (name, email, ssn, card)
WHERE NOT EXISTS (SELECT 1 FROM crm.customers);

INSERT INTO crm.orders (customer_id, amount, status)
SELECT 1 + (g % 4), round((10 + g * 3.7)::numeric, 2), CASE WHEN g % 5 = 0 THEN 'refunded' ELSE 'paid' END
FROM generate_series(1, 40) AS g
WHERE NOT EXISTS (SELECT 1 FROM crm.orders);

INSERT INTO crm.tickets (customer_id, subject)
SELECT 1 + (g % 4), 'Ticket #' || g FROM generate_series(1, 8) AS g
WHERE NOT EXISTS (SELECT 1 FROM crm.tickets);

INSERT INTO reporting.daily_revenue (day, revenue)
SELECT current_date - g, round((1000 + g * 17.3)::numeric, 2) FROM generate_series(0, 29) AS g
ON CONFLICT (day) DO NOTHING;
