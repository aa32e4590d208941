"""The operator commands behind ``sentinel``: submit, status, wait, cancel, tail, verify,
repair, report, export, doctor, and the event-schema generator.

They read the state directory without the daemon's lock (or take it, for ``log repair``)
and never import the daemon: what they share with it lives in the lower layers.
"""
