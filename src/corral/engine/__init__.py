"""The engine: runner (replay, steps, limits), worker (claims, slots, leases, drain), events."""
