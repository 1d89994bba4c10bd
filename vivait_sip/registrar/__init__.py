"""SIP registrar: authentication and location service."""
