"""The client side: the reference probe, the agent client and the fleet simulator. The server never imports it."""
