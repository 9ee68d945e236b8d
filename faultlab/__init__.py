"""faultlab: a network fault-injection proxy and latency lab for SIP/VoIP apps."""

__version__ = "0.1.0"
