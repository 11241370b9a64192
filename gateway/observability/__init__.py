"""What ops read: Prometheus metrics, structured logs."""
