-- migration_bootstrap: create the instance's schema and its migration table if missing.
-- Runs under the migration lock (migration_lock.sql), so concurrent starters never race on
-- CREATE. Parameters: none. Returns nothing.
create schema if not exists {schema};
create table if not exists {schema}.migration (
    id         integer     not null,
    name       text        not null,
    applied_at timestamptz not null default now(),
    constraint migration_pkey primary key (id)
);
