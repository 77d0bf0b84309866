-- Runs once, when the postgres volume is first initialised. The role has no password: it can
-- only log in through the pg_hba `cert` rule, with a certificate whose CN is "app".
CREATE ROLE app LOGIN;
CREATE DATABASE app OWNER app;
