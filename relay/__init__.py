"""The relay server: connections, routing, delivery, operations endpoints, command line."""
