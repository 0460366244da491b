-- pause_list: the paused queues and tasks, for operators (skivi queues, the dashboard, the
-- engine's metrics). A small table, read whole.
-- Parameters: none.
-- Returns one row per pause: kind ('queue' or 'task'), name, paused_at; by kind and name.
select p.kind, p.name, p.paused_at
from {schema}.pause p
order by p.kind, p.name;
