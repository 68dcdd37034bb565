"""The controller: job states and their transitions (`states`), the pure scheduling and retry
core shared with the simulator (`core`), and requests from bin/kill (`requests`)."""
