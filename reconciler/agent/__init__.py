"""The agent: the program that runs ON EACH TARGET MACHINE, one JSON request in, one JSON
answer out (see `protocol`). Shipped there as one zip archive that the target's python3
runs (`reconciler.execute.agent_client` builds and ships it).

Constraints: python 3.9+ on the target (checked by vermin in `make lint`), the standard
library only, imports only from this package (relative), Linux (/proc).

Modules: `protocol` (one command, or `serve` for a whole attempt) dispatches to
`commands` (instances, through the table of activation types in `kinds`: `process`,
`sqlite`, `wrapper`, `package`), `leases`, `profiles`, `gc` and `store`; `request` reads
requests, `layout` names the folders under stateDir, `files` and `processes` are the
plumbing, `health` the checks.
"""
