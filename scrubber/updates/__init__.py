"""Update methods, one module each, all ``(UpdateTask, UpdateSettings) -> UpdateResult``."""

from scrubber.updates.first_order import first_order
from scrubber.updates.iterative import iterative
from scrubber.updates.task import UpdateResult, UpdateSettings, UpdateTask

METHODS = {
    "first-order": first_order,
    "iterative": iterative,
}

__all__ = ["METHODS", "UpdateResult", "UpdateSettings", "UpdateTask", "first_order", "iterative"]
