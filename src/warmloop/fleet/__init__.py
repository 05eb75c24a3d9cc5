"""Running warmloop as a fleet: the routing keys (`keys.py`), HAProxy's configuration,
`warmloop fleet config|up`, and a model of the proxy's hashing for the benchmark."""
