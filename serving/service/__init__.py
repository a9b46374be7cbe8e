"""statlane serve: the service in one process (gateway, assembly, routing, runtime, delivery)."""
