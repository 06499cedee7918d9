"""hpnlab: a lab environment for high-performance Linux network programming."""
