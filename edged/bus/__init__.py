"""The ZeroMQ bus: events published to, and requests served for, the device's services."""
