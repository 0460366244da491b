-- engine_deregister: a cleanly stopped engine removes its row (its lease). Any job it still
-- held is rescued as an orphan by job_rescue.sql.
-- Parameters: %(engine)s. Returns nothing.
delete from {schema}.engine where id = %(engine)s;
