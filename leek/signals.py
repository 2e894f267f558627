"""leek's own signals, for code that hooks into the life of tasks.

Connect a receiver as to any Django signal::

    from django.dispatch import receiver
    from leek.signals import task_retried

    @receiver(task_retried)
    def count_retry(sender, task_id, name, attempt, retry_at, exc_type, **kwargs): ...

=============  ================================  =========================================
signal         sent when                         arguments
=============  ================================  =========================================
task_retried   an attempt of a task raised and   ``task_id`` (uuid.UUID), ``name`` (the
               the task will run again           task's dotted path), ``attempt`` (the
                                                 attempt that failed, from 1),
                                                 ``retry_at`` (aware datetime: the next
                                                 attempt's earliest start), ``exc_type``
                                                 (the exception's dotted path),
                                                 ``exc_message``, ``traceback``
=============  ================================  =========================================

The sender is the worker pool class (``leek.server.workers.Pool``). The broker
sends them in its own process, on the worker thread of the attempt, in both
pools (with POOL "processes" the task ran in a worker process; the signal is
still the broker's), once it has decided what follows the attempt: the
attempt's FailedTask row is written a moment later, in the broker's next batch.
They are sent with ``send_robust``: a receiver that raises is logged (by
Django, on the ``django.dispatch`` logger) and changes nothing: the task is
retried all the same, and the other receivers still run.

Tasks of Django's tasks framework also send that framework's signals
(leek.backends says when); a failure that will be retried sends
``task_retried``, never the framework's ``task_finished``.
"""

from __future__ import annotations

from django.dispatch import Signal

task_retried = Signal()
