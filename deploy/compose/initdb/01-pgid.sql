-- pgid's admin role and the application database (README, "Preparing the database").
CREATE ROLE pgid_admin LOGIN CREATEROLE PASSWORD 'pgid-admin-example-password';
GRANT pg_signal_backend TO pgid_admin;
CREATE DATABASE app OWNER pgid_admin;
\connect app
SET ROLE pgid_admin;
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, email text NOT NULL, total numeric NOT NULL);
INSERT INTO shop.orders VALUES (1, 'ada@example.com', 42.50), (2, 'grace@example.com', 17.00);
