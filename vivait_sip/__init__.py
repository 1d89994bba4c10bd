"""vivait-sip: SIP registrar, B2BUA and WebRTC gateway in pure-Python asyncio."""

from . import native as _native

__version__ = "0.1.0"

# Before any submodule: compiled modules are used only if they match their sources.
_native.install_guard()
