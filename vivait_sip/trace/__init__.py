"""SIP trace: live `ctl trace` sessions (with pcap output) and HEP v3 export (Homer, sngrep).

`feature.py` wires it into the server, `match.py` selects messages, `hep.py` and `pcap.py`
write the two wire formats, `cli.py` is the `vivait-sip ctl trace` client.
"""
