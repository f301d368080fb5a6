"""Caterva2 services: broker, publisher, subscriber and a launcher for all three."""
