"""Update methods, one module each, all ``(UpdateTask, UpdateSettings) -> UpdateResult``."""

from scrubber.updates.first_order import first_order
from scrubber.updates.iau import iau
from scrubber.updates.iterative import iterative
from scrubber.updates.second_order import second_order
from scrubber.updates.task import UpdateResult, UpdateSettings, UpdateTask

METHODS = {
    "first-order": first_order,
    "second-order": second_order,
    "iau": iau,
    "iterative": iterative,
}

__all__ = ["METHODS", "UpdateResult", "UpdateSettings", "UpdateTask", "first_order", "iau", "iterative", "second_order"]
