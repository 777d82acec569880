"""Every Redis key canvasflow uses, declared once."""

from __future__ import annotations

from dataclasses import dataclass

# Step fields live in one hash per run as "<step>|<field>"; step ids may not contain "|".
STEP_FIELD_SEP = "|"


@dataclass(frozen=True)
class Keys:
    prefix: str = "cf"

    # Every key of one run carries the hash tag "{<run id>}" (Redis Cluster hashes only the part
    # between the first "{" and "}"), so all of them lie in one slot. Fleet-wide keys (the events
    # stream, the live and controlled sets, the control channel) carry no tag of their own, and
    # most scripts touch both; so on a cluster the prefix itself is a tag ("{cf}": the first tag
    # wins, every key lies in one slot). docs/design.md, "Redis Cluster".

    def run_tag(self, run_id: str) -> str:
        """The hash tag every key of the run shares."""
        return "{" + run_id + "}"

    def run(self, run_id: str) -> str:
        """Hash: the run's own fields (status, epoch, seq, inputs, definition, times...)."""
        return f"{self.prefix}:run:{self.run_tag(run_id)}"

    def steps(self, run_id: str) -> str:
        """Hash: '<step>|status', '<step>|attempts', '<step>|output'... for every step."""
        return f"{self.run(run_id)}:steps"

    def attempts(self, run_id: str) -> str:
        """List: one JSON record per finished step attempt, in finishing order."""
        return f"{self.run(run_id)}:attempts"

    def completed(self, run_id: str) -> str:
        """List: steps in completion order (compensations run newest first). The Lua scripts
        derive it as run(run_id) .. ':completed', next to ':steps' and ':attempts'."""
        return f"{self.run(run_id)}:completed"

    def items(self, run_id: str) -> str:
        """Hash: '<step>[<i>]|status', '|attempts', '|output'... for every item of every mapped
        step of the run (the same fields as a step's, apart from the steps so that reading a
        run's steps never reads its 10,000 items)."""
        return f"{self.run(run_id)}:items"

    def item_attempts(self, run_id: str) -> str:
        """List: one JSON record per finished item attempt (the steps' list stays small)."""
        return f"{self.run(run_id)}:items:attempts"

    def map_data(self, run_id: str) -> str:
        """Hash: each mapped step's element list, stored once when it expands ('<step>|<i>':
        element JSON, '<step>|n', '<step>|epoch'), and the claims of its lanes
        ('<step>|todo|<k>', '<step>|cursor', '<step>|after|<i>': max_parallel)."""
        return f"{self.run(run_id)}:map"

    def step_hash(self, run_id: str, step_id: str) -> str:
        """The hash that holds ``step_id``'s fields: an item's lie in ``items``."""
        return self.items(run_id) if is_item(step_id) else self.steps(run_id)

    def step_attempts(self, run_id: str, step_id: str) -> str:
        return self.item_attempts(run_id) if is_item(step_id) else self.attempts(run_id)

    def legacy_run_keys(self, run_id: str) -> list[tuple[str, str]]:
        """(name before 2026-12, name now) of each key of the run that had no hash tag then.
        Leases are left out: they expire within seconds of their process."""
        old = f"{self.prefix}:run:{run_id}"
        return [
            (old, self.run(run_id)),
            (f"{old}:steps", self.steps(run_id)),
            (f"{old}:attempts", self.attempts(run_id)),
            (f"{old}:completed", self.completed(run_id)),
        ]

    def lease(self, run_id: str, step_id: str) -> str:
        """String with TTL: which process is running the step right now."""
        return f"{self.prefix}:lease:{self.run_tag(run_id)}:{step_id}"

    def children(self, run_id: str) -> str:
        """Set: the child runs that sub-workflow steps of the run started (control reaches them)."""
        return f"{self.run(run_id)}:children"

    def child_of(self, run_id: str, step_id: str) -> str:
        """String: the child run a sub-workflow step started (SET NX: one child per step; a retry
        of the step deletes it, so the retry starts a fresh child)."""
        return f"{self.run(run_id)}:child:{step_id}"

    def child_join(self, child_id: str) -> str:
        """String: the signature that continues the parent's canvas when the child run ends (the
        parent's sub-workflow step stored it; whoever GETDELs it sends it, exactly once)."""
        return f"{self.run(child_id)}:join"

    def settled_channel(self, run_id: str) -> str:
        """Pub/sub channel: a message when the run reaches a final or waiting status."""
        return f"{self.prefix}:settled:{self.run_tag(run_id)}"

    @property
    def control_channel(self) -> str:
        """Pub/sub channel: '<run> <action> <flag>' whenever an operator action or a failure
        changes what may start in a run (workers/watch.py listens)."""
        return f"{self.prefix}:control"

    @property
    def controlled(self) -> str:
        """Sorted set: run id -> time of the last such change, kept for a day (a worker process
        that starts or reconnects reads it, so it misses no change)."""
        return f"{self.prefix}:controlled"

    @property
    def runs(self) -> str:
        """Sorted set: every run id by creation time."""
        return f"{self.prefix}:runs"

    def runs_of(self, workflow_id: str) -> str:
        return f"{self.prefix}:runs:wf:{workflow_id}"

    @property
    def live(self) -> str:
        """Sorted set: run id -> time it started or restarted, for every run that is not final
        (added at submit and on every restart, removed when the run ends): the watchdog's work
        list, so finding stalled runs never scans the history."""
        return f"{self.prefix}:live"

    @property
    def watchdog(self) -> str:
        """Hash: run id -> "<status>:<seq> <time>": what the watchdog last saw a live run at and since
        when (shared by every watchdog process, so a restart or a second watchdog loses nothing)."""
        return f"{self.prefix}:watchdog"

    @property
    def instance(self) -> str:
        """String: a random token the first watchdog writes (``SET NX``); when a watchdog that
        saw it finds it gone or changed, Redis lost canvasflow's state (``--recover``)."""
        return f"{self.prefix}:instance"

    @property
    def sla_watch(self) -> str:
        """Set: runs with an SLA that are not final yet (the SLA monitor's work list)."""
        return f"{self.prefix}:sla"

    @property
    def events(self) -> str:
        """Stream: every state change of every run, consumed by the recorder."""
        return f"{self.prefix}:events"

    @property
    def workflows(self) -> str:
        """Set: registered workflow ids."""
        return f"{self.prefix}:workflows"

    @property
    def workflows_generation(self) -> str:
        """Counter: moved on by every registration (the event-trigger index of each process is
        rebuilt when it changes)."""
        return f"{self.prefix}:workflows:generation"

    def trigger_claim(self, digest: str) -> str:
        """String with TTL: the run a trigger started for one event key or fire time (written in
        the transaction that creates the run; orchestrator/engine/publish.py)."""
        return f"{self.prefix}:trigger:claim:{digest}"

    def workflow(self, workflow_id: str) -> str:
        """Hash: version -> definition JSON."""
        return f"{self.prefix}:wf:{workflow_id}"

    def workflow_versions(self, workflow_id: str) -> str:
        """List: versions in registration order (the last is the latest)."""
        return f"{self.prefix}:wf:{workflow_id}:versions"

    # -- concurrency slots (orchestrator/engine/lua/conc.lua) ---------------------------------

    def conc_group(self, workflow_id: str, key: str) -> str:
        """Hash: limit, workflow, key, index of one concurrency group; the Lua scripts add
        ':active' (sorted set: run id -> admission time, the runs holding a slot) and ':waiting'
        (sorted set: run id -> priority rank * 1e12 + submit sequence, the queue). The key's
        length comes first, so no key can name another group's sets (workflow ids have no ':')."""
        return f"{self.prefix}:conc:{workflow_id}:{len(key)}:{key}"

    def conc_active(self, group: str) -> str:
        return f"{group}:active"

    def conc_waiting(self, group: str) -> str:
        return f"{group}:waiting"

    def conc_index(self, workflow_id: str) -> str:
        """Set: the groups of the workflow that hold or wait for a slot."""
        return f"{self.prefix}:concidx:{workflow_id}"

    @property
    def conc_seq(self) -> str:
        """String: the submit sequence of waiting runs (their order in a queue)."""
        return f"{self.prefix}:concseq"

    def worker_alive(self, hostname: str) -> str:
        """String with TTL, refreshed on each Celery heartbeat: the worker is online."""
        return f"{self.prefix}:alive:{hostname}"

    @property
    def dead_messages(self) -> str:
        """List: JSON records of task messages a worker refused to run (too deep or too big,
        workers/guard.py), newest last, the last 1000 kept."""
        return f"{self.prefix}:dead:messages"

    @property
    def legacy_web_secret(self) -> str:
        """String: the session signing key versions before 2026-12 kept here; only ever deleted
        now (web/app.py), since anyone who could read Redis forged sessions with it."""
        return f"{self.prefix}:web:secret_key"

    @property
    def broker(self) -> str:
        """Prefix of the Celery broker's and result backend's keys (``global_keyprefix``): queues,
        bindings, kombu's ``unacked`` hash and task results live under the deployment's prefix."""
        return f"{self.prefix}:celery:"

    @property
    def broker_unacked(self) -> str:
        """Hash: messages delivered and not acknowledged yet (kombu's Redis transport)."""
        return f"{self.broker}unacked"

    @property
    def inspect_workers(self) -> str:
        """Hash: hostname -> JSON of what the dashboard's Celery event capture knows of a worker."""
        return f"{self.prefix}:inspect:workers"

    @property
    def socketio_channel(self) -> str:
        """Pub/sub channel of Flask-SocketIO's Redis message queue (the web processes)."""
        return f"{self.prefix}-socketio"

    @property
    def catalog(self) -> str:
        """Hash: worker hostname -> JSON {plugins, queues, started_at, pid}."""
        return f"{self.prefix}:catalog"

    # -- schedules (orchestrator/engine/scheduler.py) -------------------------------------------

    def schedule_fire(self, run_id: str) -> str:
        """String with TTL: the claim of one fire time, whose run has the deterministic id
        ``run_id``: a scheduler's lease token while it submits, then "done:<run id>". In the run's
        slot (its hash tag), so the run is created under a WATCH of its claim."""
        return f"{self.prefix}:sched:fire:{self.run_tag(run_id)}"

    @property
    def schedule_cursors(self) -> str:
        """Sorted set: "<workflow> <trigger>" scored by the latest fire time (unix s) the schedulers
        have dealt with; it only moves forward (ZADD GT)."""
        return f"{self.prefix}:sched:cursor"

    @property
    def schedule_paused(self) -> str:
        """Set: "<workflow> <trigger>" of paused schedules (the audit store's cf_schedules is the
        record; schedulers copy it here at start and read this set on every tick)."""
        return f"{self.prefix}:sched:paused"

    @property
    def schedulers(self) -> str:
        """Hash: scheduler id -> time of its last tick (unix s); `canvasflow schedules` shows it."""
        return f"{self.prefix}:sched:alive"


def item_id(step_id: str, index: int) -> str:
    """Item ``index`` (0-based, element order) of mapped step ``step_id``: 'resize[3]'."""
    return f"{step_id}[{index}]"


def is_item(step_id: str) -> bool:
    """Step ids match [A-Za-z0-9][A-Za-z0-9_.-]*: only an item id holds '['."""
    return "[" in step_id


def item_of(step_id: str) -> tuple[str, int] | None:
    """(mapped step, index) of an item id, None for a step id."""
    if not step_id.endswith("]") or "[" not in step_id:
        return None
    base, _, rest = step_id.rpartition("[")
    return (base, int(rest[:-1])) if rest[:-1].isdigit() else None


def map_field(step_id: str, *parts: object) -> str:
    """A field of the ``map_data`` hash: '<step>|<i>' (an element), '<step>|known|<epoch>'..."""
    return STEP_FIELD_SEP.join([step_id, *(str(p) for p in parts)])


def step_field(step_id: str, name: str) -> str:
    return f"{step_id}{STEP_FIELD_SEP}{name}"
