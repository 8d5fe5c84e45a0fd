"""
A deterministic simulation of salt-job-retry's delivery promise (issue 15).

``world`` runs one seeded history: the real core (Store with its Lua scripts on
fakeredis+lupa, Recorder, Replayer, EngineLoop) driven by a simulated Salt.
``oracle`` checks the history against the README's promises. ``soak`` runs many.
"""
