"""Asyncio adapters that move SIP bytes between sockets and the sans-I/O core."""
