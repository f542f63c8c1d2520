"""The running device: the assembly of the parts from a Config (assembly), the frame loop (loop),
the record builder (records), the health registry and systemd notify (health, systemd), the MQTT
publisher's outbox drain (publisher), and the service's start and stop (runner)."""
