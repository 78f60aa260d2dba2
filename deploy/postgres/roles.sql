-- Nexus's PostgreSQL roles: one that changes the schema, one per service that only reads
-- and writes rows. Run once, as the database's owner or a superuser, on the database Nexus
-- uses (PostgreSQL 15 or newer):
--
--   psql "postgresql://postgres@db.internal:5432/nexus" -f deploy/postgres/roles.sql
--   psql ... -c '\password nexus_migrate'    # likewise nexus_broker, nexus_policy
--
-- Other names: psql -v migrate_role=... -v broker_role=... -v policy_role=... -f roles.sql
--
--   nexus_migrate  owns the schema's objects; only the migration Job logs in as it
--                  (DATABASE_URL in the Job).
--   nexus_broker   the broker's run time (NEXUS_BROKER_DATABASE_URL): SELECT, INSERT, UPDATE,
--   nexus_policy   DELETE on its own service's tables and nothing else (the policy's:
--                  NEXUS_POLICY_DATABASE_URL). It owns nothing, so it can CREATE, ALTER, DROP
--                  or TRUNCATE nothing, and it does not see the other service's tables.
--
-- The grants on the tables are made by the migration itself: `python -m nexus_broker migrate`
-- with NEXUS_BROKER_DATABASE_ROLE=nexus_broker grants that role the broker's tables after
-- each upgrade, so a table a new version adds is granted as it is made.

\set ON_ERROR_STOP on
\if :{?migrate_role} \else \set migrate_role nexus_migrate \endif
\if :{?broker_role} \else \set broker_role nexus_broker \endif
\if :{?policy_role} \else \set policy_role nexus_policy \endif

CREATE ROLE :"migrate_role" LOGIN;
CREATE ROLE :"broker_role" LOGIN;
CREATE ROLE :"policy_role" LOGIN;

-- Only the migration role makes objects: nobody else may create in the schema
-- (PostgreSQL 15 no longer lets PUBLIC; older servers did).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"migrate_role";
GRANT USAGE ON SCHEMA public TO :"broker_role", :"policy_role";
SELECT format('GRANT CONNECT ON DATABASE %I TO %I, %I, %I', current_database(),
              :'migrate_role', :'broker_role', :'policy_role') \gexec
