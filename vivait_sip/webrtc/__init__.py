"""The WebRTC gateway: the webfon, its sessions and web extensions (docs/webrtc.md)."""
