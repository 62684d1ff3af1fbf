"""Sinks take batches of events from the outbox and deliver them upstream.

:mod:`agent.sinks.base` holds the :class:`~agent.sinks.base.Sink` interface and what every sink
shares; :mod:`agent.sinks.registry` the one list of sink kinds; each kind is one module (``http``).
"""
