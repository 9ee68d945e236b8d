"""The one message path, below its transports: :class:`Hop`, :class:`Plan` and the :class:`Relay`
(``core``), the relay-mode header edits (:class:`Rewriter`, ``rewrite``), and the steps a plan is
carried out in (``plan``). Pure: no trio, no sockets; the transports live in ``faultlab.net``."""

from faultlab.relay.core import Relay
from faultlab.relay.plan import Hold, Hop, Outgoing, Plan, Step, steps
from faultlab.relay.rewrite import TO_DEVICE, TO_PBX, Rewriter, Side, instance_id

__all__ = ["TO_DEVICE", "TO_PBX", "Hold", "Hop", "Outgoing", "Plan", "Relay", "Rewriter", "Side", "Step",
           "instance_id", "steps"]
