"""Triggers: capture a program from its first packet and act when it ends.

- store.py: the catalog tables (triggers, actions, links), validation, API objects
- watcher.py: exec/fork/exit events (or a psutil poll) → process captures → actions
  (`TriggerWatcher`, started by server.start_services as `ctx.triggers`)
- gate.py, gate_helper.py: catch a just-started program and hold it still (ptrace)
  while its capture starts
- runner.py: the actions of a firing, once its capture has completed
- programs.py: triggers as matchers of executables; what /proc says about a pid
"""
