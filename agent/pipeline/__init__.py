"""The daemon's pipeline: machine runners, the alert log, the durable outbox, delivery, and the supervisor."""
