"""The controller (`reconciler run`, SPEC §5): one level-triggered loop per deployment,
its triggers (poll, watched repository, webhook) and conditions, and the HTTP side —
probes, metrics, the JSON API and a status page."""
