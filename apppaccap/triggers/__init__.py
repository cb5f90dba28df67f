"""Triggers: capture a program from its first packet and act when it ends.

- store.py: the catalog tables (triggers, actions, links), validation, API objects
- watcher.py: exec/fork/exit events (or a psutil poll) → process captures → actions
  (`TriggerWatcher`, started by server.start_services as `ctx.triggers`)
- pause.py: hold a just-started program still (ptrace) while its capture starts
The actions themselves run in apppaccap/actions_runner.py.
"""
