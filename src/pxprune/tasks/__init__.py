"""Tasks: what a run optimises and reports (``classification``, ``segmentation``; a new task is
one module and a registration, see docs/design/EXTENDING.md)."""

from pxprune.tasks import classification, segmentation  # noqa: F401  (registers)
from pxprune.tasks.base import TASKS, Meter, Task, get_task, list_tasks, register_task

__all__ = ["TASKS", "Meter", "Task", "get_task", "list_tasks", "register_task"]
