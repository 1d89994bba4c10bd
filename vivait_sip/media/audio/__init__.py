"""Audio for the built-in media backend: G.711, RFC 4733 events, WAV players and writers.

Decoding happens only where audio is needed (players, recording, tone tests); the relay
path forwards payloads untouched."""
