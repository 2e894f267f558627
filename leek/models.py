"""The tables: tasks, their outcomes, periodic tasks, broker nodes and events.

The broker's hot path writes these tables with prepared SQL (server/store.py);
the models stay the schema and what the admin shows.
"""

from __future__ import annotations

from django.db import models

from .ids import new_task_id


class Status(models.TextChoices):
    QUEUED = "queued", "queued"
    #: A step of a chain or a chord's callback, until what it follows succeeds.
    WAITING = "waiting", "waiting"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"
    #: Not started before its `expires_at`: it never runs.
    EXPIRED = "expired", "expired"


FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.EXPIRED)


class Task(models.Model):
    """One pushed task, from its push to its last outcome."""

    id = models.UUIDField(primary_key=True, default=new_task_id, editable=False)
    name = models.CharField(max_length=255)
    queue = models.CharField(max_length=64, default="default")
    priority = models.IntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    payload = models.BinaryField()
    args_repr = models.TextField(blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    max_retries = models.PositiveIntegerField(default=3)
    timeout = models.FloatField(null=True, blank=True)
    queued_at = models.DateTimeField()
    run_after = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    broker = models.CharField(max_length=255, blank=True, default="")
    spooled = models.BooleanField(default=False)
    code_version = models.CharField(max_length=64, blank=True, default="")
    progress = models.FloatField(null=True, blank=True)
    progress_note = models.CharField(max_length=255, blank=True, default="")
    #: Times the task was run again after it failed for good (`leek retry-failed`,
    #: the admin); retry-failed leaves it failed past its --max-requeues. The
    #: database default serves the broker's inserts, which leave it out.
    requeues = models.PositiveIntegerField(default=0, db_default=0)
    #: The task's unique key, as pushed (kept after it stops locking).
    key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - as lock_key
    #: The key while it locks: from the push until the task starts (or, with
    #: `key_running`, until it ends); NULL otherwise. Unique among the rows
    #: that have one, so a second push with a held key inserts nothing.
    lock_key = models.CharField(  # noqa: DJ001 - NULLs never collide in the unique index
        max_length=255, null=True, blank=True, editable=False
    )
    #: Whether the key keeps locking while the task runs and waits for a retry.
    key_running = models.BooleanField(default=False, db_default=False)
    #: A task not started by then is marked expired and never runs.
    expires_at = models.DateTimeField(null=True, blank=True)
    #: The chain, group or chord the task is a step of (null for a lone task).
    chain = models.UUIDField(null=True, blank=True)
    #: The step this task's success releases (a chain's next step, a chord's
    #: callback), which waits until then; null for the last step and lone tasks.
    next_step = models.UUIDField(null=True, blank=True)
    #: Its task's rate limit ("10/m", leek/ratelimit.py), "" for none; the
    #: database default serves writers that leave it out.
    rate_limit = models.CharField(max_length=32, blank=True, default="", db_default="")
    #: The lease token of the claim that holds the task: the epoch of `broker`
    #: when it claimed it (BrokerNode.epoch). A broker writes the task's running
    #: mark, outcome, requeue and progress only while both still name its claim.
    epoch = models.BigIntegerField(default=0, db_default=0, editable=False)
    #: Which of its broker's claims took the task (a number the broker counts
    #: from its start, under its epoch); NULL for a task its broker inserted.
    #: A claim whose commit's answer was lost is looked for by it
    #: (server/store/doubt.py).
    claim = models.BigIntegerField(null=True, blank=True, editable=False)

    class Meta:
        permissions = [("run_task", "Can run tasks and listed commands from the admin")]
        # Every index is written by every enqueue: on SQLite each one costs about
        # 10% of the single-row commit rate. Add one only for a query that needs it.
        indexes = [
            # queued_at last: the admin finds each queue's oldest waiting task in it.
            models.Index(
                fields=["status", "queue", "queued_at"], name="leek_task_status_queued_at"
            ),
            models.Index(fields=["-queued_at"], name="leek_task_queued_at"),
            # Only spooled rows (unowned) are in it, so a broker's own inserts never
            # touch it; in the order claims take them (server/share.py), so a
            # claim reads the rows it takes, not every task that waits unowned.
            models.Index(
                fields=["-priority", "queued_at"],
                name="leek_task_spooled",
                condition=models.Q(spooled=True),
            ),
            # Only tasks that wait and may expire: the expiry sweep's query.
            models.Index(
                fields=["expires_at"],
                name="leek_task_expiring",
                condition=models.Q(expires_at__isnull=False, status="queued"),
            ),
            # Only the queued tasks a claim took: no push writes it (an insert
            # leaves `claim` NULL). The look for a claim whose answer was lost
            # (store/doubt.py), which must not walk every queued task.
            models.Index(
                fields=["claim"],
                name="leek_task_claimed",
                condition=models.Q(claim__isnull=False, status="queued"),
            ),
            # Only steps are in these, so a lone task's insert writes neither.
            models.Index(
                fields=["chain"], name="leek_task_chain", condition=models.Q(chain__isnull=False)
            ),
            models.Index(
                fields=["next_step"],
                name="leek_task_next_step",
                condition=models.Q(next_step__isnull=False),
            ),
        ]
        constraints = [
            # Partial: the inserts of tasks without a key never touch it.
            models.UniqueConstraint(
                fields=["lock_key"],
                name="leek_task_lock_key",
                condition=models.Q(lock_key__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} [{self.id}]"


class SuccessTask(models.Model):
    """A task's successful run."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="successes")
    name = models.CharField(max_length=255)
    attempt = models.PositiveIntegerField(default=1)
    #: The node name of the broker that ran the attempt ("" in rows from before
    #: outcomes named it; the database default serves writers other than leek's).
    broker = models.CharField(max_length=255, blank=True, default="", db_default="")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(db_index=True)
    duration = models.FloatField(help_text="seconds")
    result = models.BinaryField(null=True)
    result_repr = models.TextField(blank=True, default="")
    stdout = models.TextField(blank=True, default="")
    stderr = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return f"{self.name} succeeded in {self.duration:.3f}s"


class FailedTask(models.Model):
    """One failed attempt of a task; `final` when it will not be retried."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="failures")
    name = models.CharField(max_length=255)
    attempt = models.PositiveIntegerField()
    #: The node name of the broker that ran the attempt ("" in rows from before
    #: outcomes named it; the database default serves writers other than leek's).
    broker = models.CharField(max_length=255, blank=True, default="", db_default="")
    started_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(db_index=True)
    exc_type = models.CharField(max_length=255)
    exc_message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    final = models.BooleanField(default=False)
    requeued_at = models.DateTimeField(null=True, blank=True)
    stdout = models.TextField(blank=True, default="")
    stderr = models.TextField(blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["final", "requeued_at"], name="leek_failed_pending")]

    def __str__(self) -> str:
        return f"{self.name} attempt {self.attempt}: {self.exc_type}"


class PeriodicTask(models.Model):
    """A task pushed on a schedule: a cron expression or a fixed interval."""

    name = models.CharField(max_length=255, unique=True)
    task = models.CharField(max_length=255, help_text="dotted path of the callable")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    cron = models.CharField(max_length=255, blank=True, default="")
    every = models.FloatField(null=True, blank=True, help_text="seconds between runs")
    queue = models.CharField(max_length=64, default="default")
    priority = models.IntegerField(default=0)
    enabled = models.BooleanField(default=True)
    catch_up = models.BooleanField(
        default=True, help_text="run once for runs missed while no broker was up"
    )
    from_settings = models.BooleanField(default=False, editable=False)
    last_run_at = models.DateTimeField(null=True, blank=True)
    next_run_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name


class BrokerNode(models.Model):
    """A broker process, as its heartbeat last described it."""

    name = models.CharField(max_length=255, unique=True)
    #: The machine the broker runs on, and `host` the address it listens on.
    hostname = models.CharField(max_length=255, blank=True, default="")
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    pid = models.PositiveIntegerField()
    version = models.CharField(max_length=32)
    code_version = models.CharField(max_length=64, blank=True, default="")
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField()
    workers = models.PositiveIntegerField(default=0)
    workers_alive = models.PositiveIntegerField(default=0)
    #: Workers running a task at the heartbeat.
    workers_busy = models.PositiveIntegerField(default=0)
    handled = models.PositiveBigIntegerField(default=0)
    healthy = models.BooleanField(default=True)
    stopped = models.BooleanField(default=False)
    note = models.CharField(max_length=255, blank=True, default="")
    #: The broker's lanes: {queue: {"pool", "workers", "alive", "busy", "stuck"}};
    #: the lane "*" serves every queue that has no lane of its own.
    queues = models.JSONField(default=dict, blank=True)
    #: The broker's lives under this name: one more at each start. Its tasks
    #: carry the epoch they were claimed in (Task.epoch).
    epoch = models.BigIntegerField(default=0, db_default=0)

    def __str__(self) -> str:
        return self.name

    def serves(self, queue: str) -> bool:
        """Whether this broker runs tasks of `queue` (on workers it has)."""
        lanes = self.queues or {"*": {"workers": self.workers}}
        lane = lanes.get(queue, lanes.get("*"))
        return bool(lane and lane.get("workers"))


class QueueState(models.Model):
    """A queue's pause: every broker sharing the database starts none of a
    paused queue's tasks, and still accepts its pushes."""

    queue = models.CharField(max_length=64, unique=True)
    paused = models.BooleanField(default=False)
    paused_at = models.DateTimeField(null=True, blank=True)
    #: Who paused it: a user in the admin, or user@host for the `leek` command.
    paused_by = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        verbose_name = "queue"

    def __str__(self) -> str:
        return f"{self.queue} ({'paused' if self.paused else 'running'})"


class RateLimit(models.Model):
    """A rate limit's token bucket, shared by every broker of the database.

    `key` is "task:<name>" or "queue:<name>". `tokens` is what the bucket held
    at `updated_at` (seconds since the epoch on the database's own clock); it
    gains `rate` tokens a second up to `burst`. Only the broker's store writes
    it (server/store/limits.py), one conditional UPDATE per limited start."""

    key = models.CharField(max_length=320, primary_key=True)
    rate = models.FloatField(help_text="tokens per second")
    burst = models.FloatField()
    tokens = models.FloatField()
    updated_at = models.FloatField(help_text="seconds since the epoch, database clock")

    def __str__(self) -> str:
        return self.key


class Event(models.Model):
    """A one-line business event (a booking, a log-in) for the admin's log."""

    kind = models.CharField(max_length=64, db_index=True)
    message = models.CharField(max_length=1024)
    actor = models.CharField(max_length=255, blank=True, default="")
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"
