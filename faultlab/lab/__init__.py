"""The lab actors around the relay: embedded PBX, push gateway, reference device,
caller, event collector. Every actor writes to one shared timeline."""
