# state.highstate / argument-less state.apply (and startup_states: highstate) apply jr.hs.
base:
  '*':
    - jr.hs
