"""Media: anchored RTP behind an rtpengine-shaped control API (docs/media.md)."""
