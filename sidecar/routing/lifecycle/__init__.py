"""Model lifecycle: the model servers the gateway runs (``process:``) and remote servers'
own load/unload hooks (``lifecycle:``), loaded on demand, unloaded when idle, swapped
within a group's memory. The rules are in each module's docstring."""

from .events import EventHub, Subscriber
from .manager import STATES, LifecycleManager, ModelUnit

__all__ = ["STATES", "EventHub", "LifecycleManager", "ModelUnit", "Subscriber"]
