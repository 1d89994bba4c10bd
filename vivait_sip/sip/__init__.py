"""Sans-I/O SIP protocol core."""
