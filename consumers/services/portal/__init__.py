"""The quarantine portal (`poststelle web`): users see and release their held mail, admins decide requests.

A service: it reads the quarantine state and acts through `pipeline.state.quarantine_actions`,
never through a stage. See `app` for the routes and the component, `security` for what keeps it
safe to expose, docs/operations.md for how people use it.
"""
