"""The fleet: this sensor's connections, usage minutes and alert events shipped to ClickHouse,
and the fleet's questions asked of it (docs/FLEET.md)."""
