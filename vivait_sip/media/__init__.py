"""Media: anchored RTP behind one control API in rtpengine's shape (docs/media.md).

`control` holds the messages and the `MediaBackend` protocol; `ng` speaks them to
rtpengine daemons; `anchor` decides which calls are anchored and is the B2BUA's
`MediaSeam`; `feature` owns the backend, its config, status and `ctl media`.  The
built-in backend is the media worker processes (`worker`, `client`, `relay`, `audio`).
"""
