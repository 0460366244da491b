-- Schema snapshot: the catalog of a freshly migrated "skivi" schema, as dumped by
-- tests/db/test_migrations.py (test_schema_matches_snapshot). Nothing runs this file; the
-- test compares it with the dump, so the effect of a migration shows up in review as a
-- diff here. Regenerate it with:
--     SKIVI_UPDATE_SNAPSHOT=1 ./run-tests tests/db/test_migrations.py -k snapshot

-- sequences
create sequence skivi.engine_id_seq as bigint start 1 minvalue 1 maxvalue 9223372036854775807 increment 1 no cycle;  -- owned by engine.id
create sequence skivi.job_id_seq as bigint start 1 minvalue 1 maxvalue 9223372036854775807 increment 1 no cycle;  -- owned by job.id

-- types

-- tables
create table skivi.cron (
    identifier text not null,
    known_since timestamp with time zone not null default now(),
    last_execution timestamp with time zone,
    constraint cron_pkey PRIMARY KEY (identifier)
);

create table skivi.engine (
    id bigint not null generated always as identity,
    hostname text not null,
    pid integer not null,
    version text not null,
    started_at timestamp with time zone not null default now(),
    heartbeat_at timestamp with time zone not null default now(),
    lease_timeout double precision not null,
    processes integer not null,
    concurrency integer not null,
    in_flight integer not null default 0,
    stopping boolean not null default false,
    running bigint[] not null default ARRAY[]::bigint[],
    constraint engine_pkey PRIMARY KEY (id)
) with (fillfactor=50);

create table skivi.job (
    id bigint not null default nextval('skivi.job_id_seq'::regclass),
    task_identifier text not null,
    queue_name text,
    payload jsonb not null default '{}'::jsonb,
    priority smallint not null default 0,
    run_at timestamp with time zone not null default now(),
    attempts integer not null default 0,
    max_attempts integer not null default 25,
    last_error text,
    key text,
    flags text[],
    locked_by bigint,
    locked_at timestamp with time zone,
    lease bigint not null default 0,
    created_at timestamp with time zone not null default now(),
    updated_at timestamp with time zone not null default now(),
    created_by oid,
    constraint job_attempts_check CHECK ((attempts >= 0)),
    constraint job_key_check CHECK (((length(key) >= 1) AND (length(key) <= 512))),
    constraint job_locked_check CHECK (((locked_by IS NULL) = (locked_at IS NULL))),
    constraint job_max_attempts_check CHECK ((max_attempts >= 1)),
    constraint job_pkey PRIMARY KEY (id),
    constraint job_queue_name_check CHECK (((length(queue_name) >= 1) AND (length(queue_name) <= 128))),
    constraint job_task_identifier_check CHECK (((length(task_identifier) >= 1) AND (length(task_identifier) <= 128))),
    constraint job_waiting_check CHECK ((locked_by IS NULL))
) with (autovacuum_vacuum_scale_factor=0.01, autovacuum_vacuum_threshold=1000, autovacuum_analyze_scale_factor=0.02, autovacuum_vacuum_cost_limit=2000, fillfactor=80);

create table skivi.job_cancel (
    id bigint not null,
    requested_at timestamp with time zone not null default now(),
    requested_by text not null,
    reason text,
    run_at timestamp with time zone not null,
    attempts integer not null,
    key text,
    constraint job_cancel_pkey PRIMARY KEY (id)
);

create table skivi.job_history (
    id bigint not null,
    task_identifier text not null,
    queue_name text,
    payload jsonb not null,
    priority smallint not null,
    run_at timestamp with time zone not null,
    attempts integer not null,
    max_attempts integer not null,
    last_error text,
    key text,
    flags text[],
    created_at timestamp with time zone not null,
    finished_at timestamp with time zone not null default now(),
    outcome text not null,
    reason text,
    last_error_traceback text,
    cancelled_by text,
    cancel_requested_at timestamp with time zone,
    constraint job_history_outcome_check CHECK ((outcome = ANY (ARRAY['completed'::text, 'exhausted'::text, 'cancelled'::text]))) NOT VALID,
    constraint job_history_pkey PRIMARY KEY (id)
) with (autovacuum_vacuum_scale_factor=0.05);

create table skivi.job_limit (
    name text not null,
    tasks text[] not null,
    key_path text[],
    slots integer not null,
    period double precision,
    updated_at timestamp with time zone not null default now(),
    constraint job_limit_name_check CHECK (((length(name) >= 1) AND (length(name) <= 128))),
    constraint job_limit_period_check CHECK (((period IS NULL) OR (period > (0)::double precision))),
    constraint job_limit_pkey PRIMARY KEY (name),
    constraint job_limit_slots_check CHECK (((slots >= 1) AND (slots <= 10000))),
    constraint job_limit_tasks_check CHECK ((cardinality(tasks) >= 1))
);

create view skivi.job_live as
 SELECT job.id,
    job.task_identifier,
    job.queue_name,
    job.payload,
    job.priority,
    job.run_at,
    job.attempts,
    job.max_attempts,
    job.last_error,
    job.key,
    job.flags,
    job.locked_by,
    job.locked_at,
    job.lease,
    job.created_at,
    job.updated_at,
    job.created_by
   FROM skivi.job
UNION ALL
 SELECT job_running.id,
    job_running.task_identifier,
    job_running.queue_name,
    job_running.payload,
    job_running.priority,
    job_running.run_at,
    job_running.attempts,
    job_running.max_attempts,
    job_running.last_error,
    job_running.key,
    job_running.flags,
    job_running.locked_by,
    job_running.locked_at,
    job_running.lease,
    job_running.created_at,
    job_running.updated_at,
    job_running.created_by
   FROM skivi.job_running;

create table skivi.job_queue (
    queue_name text not null,
    job_id bigint,
    locked_by bigint,
    locked_at timestamp with time zone,
    constraint job_queue_locked_check CHECK (((job_id IS NULL) = (locked_by IS NULL))),
    constraint job_queue_pkey PRIMARY KEY (queue_name)
) with (autovacuum_vacuum_scale_factor=0.01, fillfactor=50);

create table skivi.job_result (
    id bigint not null,
    task_identifier text not null,
    outcome text not null,
    value jsonb,
    error text,
    finished_at timestamp with time zone not null default now(),
    constraint job_result_outcome_check CHECK ((outcome = ANY (ARRAY['completed'::text, 'exhausted'::text]))),
    constraint job_result_pkey PRIMARY KEY (id)
);

create table skivi.job_running (
    id bigint not null default nextval('skivi.job_id_seq'::regclass),
    task_identifier text not null,
    queue_name text,
    payload jsonb not null default '{}'::jsonb,
    priority smallint not null default 0,
    run_at timestamp with time zone not null default now(),
    attempts integer not null default 0,
    max_attempts integer not null default 25,
    last_error text,
    key text,
    flags text[],
    locked_by bigint,
    locked_at timestamp with time zone,
    lease bigint not null default 0,
    created_at timestamp with time zone not null default now(),
    updated_at timestamp with time zone not null default now(),
    created_by oid,
    constraint job_attempts_check CHECK ((attempts >= 0)),
    constraint job_key_check CHECK (((length(key) >= 1) AND (length(key) <= 512))),
    constraint job_locked_check CHECK (((locked_by IS NULL) = (locked_at IS NULL))),
    constraint job_max_attempts_check CHECK ((max_attempts >= 1)),
    constraint job_queue_name_check CHECK (((length(queue_name) >= 1) AND (length(queue_name) <= 128))),
    constraint job_running_claimed_check CHECK ((locked_by IS NOT NULL)),
    constraint job_running_pkey PRIMARY KEY (id),
    constraint job_task_identifier_check CHECK (((length(task_identifier) >= 1) AND (length(task_identifier) <= 128)))
) with (fillfactor=100, autovacuum_vacuum_scale_factor=0, autovacuum_vacuum_threshold=5000, autovacuum_vacuum_insert_threshold=-1, autovacuum_vacuum_cost_limit=2000);

create table skivi.job_traceback (
    id bigint not null,
    traceback text not null,
    constraint job_traceback_pkey PRIMARY KEY (id)
);

create table skivi.limit_key (
    limit_name text not null,
    key text not null,
    held_ids bigint[] not null default '{}'::bigint[],
    held_leases bigint[] not null default '{}'::bigint[],
    held_by bigint[] not null default '{}'::bigint[],
    starts timestamp with time zone[] not null default '{}'::timestamp with time zone[],
    constraint limit_key_held_check CHECK (((cardinality(held_ids) = cardinality(held_leases)) AND (cardinality(held_ids) = cardinality(held_by)))),
    constraint limit_key_limit_fkey FOREIGN KEY (limit_name) REFERENCES skivi.job_limit(name) ON DELETE CASCADE,
    constraint limit_key_pkey PRIMARY KEY (limit_name, key)
) with (fillfactor=50);

create table skivi.limits (
    only_row boolean not null default true,
    max_payload_bytes integer not null default 1048576,
    constraint limits_max_payload_bytes_check CHECK ((max_payload_bytes > 0)),
    constraint limits_only_row_check CHECK (only_row),
    constraint limits_pkey PRIMARY KEY (only_row)
);

create table skivi.migration (
    id integer not null,
    name text not null,
    applied_at timestamp with time zone not null default now(),
    constraint migration_pkey PRIMARY KEY (id)
);

create table skivi.pause (
    kind text not null,
    name text not null,
    paused_at timestamp with time zone not null default now(),
    constraint pause_kind_check CHECK ((kind = ANY (ARRAY['queue'::text, 'task'::text]))),
    constraint pause_name_check CHECK (((length(name) >= 1) AND (length(name) <= 128))),
    constraint pause_pkey PRIMARY KEY (kind, name)
);

-- indexes
CREATE UNIQUE INDEX cron_pkey ON skivi.cron USING btree (identifier);
CREATE UNIQUE INDEX engine_pkey ON skivi.engine USING btree (id);
CREATE INDEX job_claim_idx ON skivi.job USING btree (priority, run_at, id) WHERE ((locked_by IS NULL) AND (queue_name IS NULL));
CREATE UNIQUE INDEX job_key_idx ON skivi.job USING btree (key) WHERE (key IS NOT NULL);
CREATE UNIQUE INDEX job_pkey ON skivi.job USING btree (id);
CREATE INDEX job_queue_claim_idx ON skivi.job USING btree (queue_name, priority, run_at, id) WHERE ((locked_by IS NULL) AND (queue_name IS NOT NULL));
CREATE UNIQUE INDEX job_cancel_pkey ON skivi.job_cancel USING btree (id);
CREATE INDEX job_history_finished_at_idx ON skivi.job_history USING btree (finished_at);
CREATE UNIQUE INDEX job_history_pkey ON skivi.job_history USING btree (id);
CREATE UNIQUE INDEX job_limit_pkey ON skivi.job_limit USING btree (name);
CREATE UNIQUE INDEX job_queue_pkey ON skivi.job_queue USING btree (queue_name);
CREATE INDEX job_result_finished_at_idx ON skivi.job_result USING btree (finished_at);
CREATE UNIQUE INDEX job_result_pkey ON skivi.job_result USING btree (id);
CREATE INDEX job_running_key_idx ON skivi.job_running USING btree (key) WHERE (key IS NOT NULL);
CREATE UNIQUE INDEX job_running_pkey ON skivi.job_running USING btree (id);
CREATE UNIQUE INDEX job_traceback_pkey ON skivi.job_traceback USING btree (id);
CREATE UNIQUE INDEX limit_key_pkey ON skivi.limit_key USING btree (limit_name, key);
CREATE UNIQUE INDEX limits_pkey ON skivi.limits USING btree (only_row);
CREATE UNIQUE INDEX migration_pkey ON skivi.migration USING btree (id);
CREATE UNIQUE INDEX pause_pkey ON skivi.pause USING btree (kind, name);

-- triggers

-- functions (body: md5 of its source)
-- function skivi.add_job(identifier text, payload jsonb, queue_name text, run_at timestamp with time zone, max_attempts integer, job_key text, priority integer, flags text[], job_key_mode text) returns TABLE(ord bigint, outcome text, id bigint, task_identifier text, queue_name text, payload jsonb, priority smallint, run_at timestamp with time zone, attempts integer, max_attempts integer, last_error text, key text, flags text[], locked_by bigint, locked_at timestamp with time zone, lease bigint, created_at timestamp with time zone, updated_at timestamp with time zone)
--     language sql volatile security definer; body eea4fe78dbe2f1fc54d87d7db1401f7a
-- function skivi.add_jobs(specs jsonb) returns TABLE(ord bigint, outcome text, id bigint, task_identifier text, queue_name text, payload jsonb, priority smallint, run_at timestamp with time zone, attempts integer, max_attempts integer, last_error text, key text, flags text[], locked_by bigint, locked_at timestamp with time zone, lease bigint, created_at timestamp with time zone, updated_at timestamp with time zone)
--     language plpgsql volatile security definer; body 2bbfd8b5bcfefda91dd620fef0349e87
-- function skivi.add_keyed_job(p_task text, p_payload jsonb, p_queue_name text, p_run_at timestamp with time zone, p_max_attempts integer, p_priority smallint, p_flags text[], p_job_key text, p_job_key_mode text, OUT job skivi.job, OUT outcome text) returns record
--     language plpgsql volatile security definer; body fa3fd206289d99fc88edc65832d39886
-- function skivi.cancel_jobs(job_ids bigint[], reason text, cancelled_by text) returns TABLE(id bigint, result text, locked_by bigint)
--     language sql volatile; body 5ade5e2aeef6f0fe8883f47c0737727a
-- function skivi.check_specs(specs jsonb) returns void
--     language plpgsql stable; body a4c67871b5405bdad6114a872b0aeebc
-- function skivi.claim_jobs(p_engine bigint, p_limit integer, p_serial_limit integer, p_max_bytes bigint, p_tasks text[], p_forbidden text[], p_queues text[], p_paused_queues text[], p_paused_tasks text[], p_lock_timeout text, OUT id bigint, OUT lease bigint, OUT message text, OUT task_identifier text, OUT cut boolean) returns SETOF record
--     language plpgsql volatile; body d00178b6e2b2a33879f07a1b2aa43aba
-- function skivi.complete_claims(p_engine bigint, p_ids bigint[], p_leases bigint[], p_history boolean, p_lock_timeout text, OUT id bigint, OUT lease bigint) returns SETOF record
--     language plpgsql volatile; body a300187c0b47aa42c759d977d01b760e
-- function skivi.complete_jobs(job_ids bigint[]) returns SETOF skivi.job
--     language sql volatile; body 4d4aa24367a024e5785968bcc8a09e57
-- function skivi.hold_queues(names text[]) returns void
--     language plpgsql volatile; body 7fe3fd3f03984960a97cfc93baa3fb98
-- function skivi.insert_job(task text, payload jsonb, queue_name text, run_at timestamp with time zone, max_attempts integer, priority smallint, flags text[], OUT id bigint, OUT inserted_at timestamp with time zone) returns record
--     language plpgsql volatile security definer; body d52cb0907be6c761871a7bde741fa8b7
-- function skivi.insert_jobs(specs jsonb, OUT ids text, OUT inserted_at timestamp with time zone) returns record
--     language plpgsql volatile security definer; body ae79276e8123becc815cbdf80ce6f221
-- function skivi.pause_queue(queue_name text) returns boolean
--     language sql volatile; body b3f18c6b744e10a801136af5e29498bb
-- function skivi.pause_task(task_identifier text) returns boolean
--     language sql volatile; body f921a50bab7cfcf3db752e96f14b52ff
-- function skivi.permanently_fail_jobs(job_ids bigint[], error_message text) returns SETOF skivi.job_history
--     language sql volatile; body bf61b9e8d3b3ca5dacd11fcb8200d4c1
-- function skivi.refuse_specs(specs jsonb) returns text
--     language plpgsql volatile; body 414f1a2f8ef4f3bc439f0ab693918977
-- function skivi.remove_job(job_key text) returns SETOF skivi.job
--     language sql volatile; body 53d49aaf58cfee86f5e48356f625d551
-- function skivi.reschedule_jobs(job_ids bigint[], run_at timestamp with time zone, priority integer, attempts integer, max_attempts integer) returns SETOF skivi.job
--     language sql volatile; body 6a4a110617d29bb78d5f7125a82b8d3a
-- function skivi.resume_queue(queue_name text) returns boolean
--     language sql volatile; body c27e14ee1f870d7ee45f5b61c78ffe92
-- function skivi.resume_task(task_identifier text) returns boolean
--     language sql volatile; body eeeecb3e0b87b51b2622526b7f42ca78
-- function skivi.retry_jobs(job_ids bigint[]) returns SETOF skivi.job
--     language sql volatile; body 8e33e9a8258769f4f85fa9a98d04b1f2
-- function skivi.set_paused(p_kind text, p_name text, p_paused boolean) returns boolean
--     language sql volatile; body 12dae9475ca6aa72bebc9586658469d7
