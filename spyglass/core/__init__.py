"""Pure engine: packet decode, flows, detection. Imports nothing but the stdlib and numpy."""
