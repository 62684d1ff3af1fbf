"""The operations surface: status endpoints and metrics, HTTP serving, systemd notify, logging."""
