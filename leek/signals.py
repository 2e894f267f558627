"""leek's own signals, for code that hooks into the life of tasks and brokers.

Connect a receiver as to any Django signal, in code the broker imports (an
AppConfig.ready of an app in INSTALLED_APPS)::

    from django.dispatch import receiver
    from leek.signals import task_failed

    @receiver(task_failed)
    def report(sender, task_id, name, queue, attempt, exc_type, final, **kwargs): ...

Take ``**kwargs`` as well: a signal may gain arguments.

===============  ================================  =========================================
signal           sent when                         arguments
===============  ================================  =========================================
task_received    the broker committed a pushed     ``task_id`` (uuid.UUID), ``name`` (the
                 task (once per task, a replayed   task's dotted path), ``queue``
                 push sends none; a task the
                 broker did not receive, spooled
                 by a client or a periodic run,
                 sends none)
task_started     an attempt of a task begins       ``task_id``, ``name``, ``queue``,
                                                   ``attempt`` (from 1)
task_succeeded   an attempt returned               ``task_id``, ``name``, ``queue``,
                                                   ``attempt``, ``result`` (the return
                                                   value as stored, loaded again; None
                                                   when the broker cannot load it),
                                                   ``duration`` (seconds, float)
task_failed      an attempt raised, timed out or   ``task_id``, ``name``, ``queue``,
                 lost its worker process,          ``attempt``, ``exc_type`` (the
                 whether or not the task runs      exception's dotted path),
                 again                             ``exc_message``, ``traceback``,
                                                   ``final`` (True: the task failed for
                                                   good; False: task_retried follows)
task_retried     an attempt failed and the task    as task_failed without ``final``, and
                 will run again                    ``retry_at`` (aware datetime: the next
                                                   attempt's earliest start)
broker_started   the broker listens, before it     ``node`` (its name), ``host``, ``port``
                 recovers its unfinished tasks
broker_stopping  the broker begins its stop (a     ``node``
                 signal or the ``stop`` verb)
===============  ================================  =========================================

Every one is sent in the broker's process, in both pools, once per event:

- task_started, task_succeeded, task_failed and task_retried on the worker
  thread of the attempt; with POOL "processes" the attempt ran in that
  thread's worker process, and the signal is still sent by the thread, in the
  broker, once the process has answered. A failed attempt sends task_failed,
  then task_retried when it is retried. The outcome of an attempt is written
  a moment later, in the broker's next batch. Their sender is the worker pool
  class (``leek.server.workers.Pool``).
- task_received on the thread that committed the push, before the task
  reaches the workers (so before its task_started) and the client its
  reply; broker_started and broker_stopping on the thread that runs the
  broker. Their sender is ``leek.server.broker.Broker``.

Receivers run in the broker, so a slow one holds up what its thread does next
(the next task of that worker; for task_received, the reply to the push
and the next commit): hand slow
work to a task or a thread. None of these is sent in a worker process:
receivers connected there never hear of anything, and one that needs to run
around the task's own code where it runs (a Sentry scope, an OpenTelemetry
span) wraps the task function instead, or connects to the tasks framework's
``task_started`` and ``task_finished``, which a framework task sends where it
runs (leek.backends). An attempt cut short by its broker's end sends none of
them: its broker is gone (the ON_FAILURE hooks hear of the task when that
ends it, leek.server.recovery).

They are sent with ``send_robust``: a receiver that raises is logged, on the
``leek.server.lifecycle`` logger with the action ``signal_receiver_failed``
and the task's fields (as well as by Django, on ``django.dispatch``), and
changes nothing: the task goes on as if it had not raised, and the other
receivers still run. Tasks of Django's tasks framework also send that
framework's signals (leek.backends says when).
"""

from __future__ import annotations

from django.dispatch import Signal

task_received = Signal()
task_started = Signal()
task_succeeded = Signal()
task_failed = Signal()
task_retried = Signal()
broker_started = Signal()
broker_stopping = Signal()

#: Each signal's name, for the records that tell of a receiver that raised.
NAMES: dict[Signal, str] = {
    task_received: "task_received",
    task_started: "task_started",
    task_succeeded: "task_succeeded",
    task_failed: "task_failed",
    task_retried: "task_retried",
    broker_started: "broker_started",
    broker_stopping: "broker_stopping",
}
