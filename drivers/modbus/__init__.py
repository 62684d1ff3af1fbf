"""Modbus driver: pure register codec and read planner, plus the I/O shell that uses them."""
