"""Live delivery: a lane per destination, deadline-bound writes, failures queued or parked."""
