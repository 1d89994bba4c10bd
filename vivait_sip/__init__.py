"""vivait-sip: SIP registrar, B2BUA and WebRTC gateway in pure-Python asyncio."""

__version__ = "0.1.0"
