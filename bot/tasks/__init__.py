"""Language tasks on what a team already wrote: summarise, translate, action items, own commands."""

from bot.tasks.runner import BUILTIN, Tasks

__all__ = ["BUILTIN", "Tasks"]
