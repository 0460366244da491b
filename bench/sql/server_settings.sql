-- server_settings: the server version and the settings that decide commit cost, printed
-- with the bench's settings and written to its JSON.
--
-- Why current_setting, not SHOW: one statement for all of them. Each value is the text
-- SHOW prints, units included (shared_buffers: 128MB). The column order is the order the
-- bench writes them in.
--
-- Parameters: none.
-- Returns one row: server_version, synchronous_commit, shared_buffers, max_connections,
-- fsync.
select
    current_setting('server_version') as server_version,
    current_setting('synchronous_commit') as synchronous_commit,
    current_setting('shared_buffers') as shared_buffers,
    current_setting('max_connections') as max_connections,
    current_setting('fsync') as fsync;
