"""Named, numbered schema migrations; PRAGMA user_version holds how many are applied.

Append only: a released migration is never edited.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "initial",
        [
            """CREATE TABLE migrations (
                number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)""",
            """CREATE TABLE deployments (
                name TEXT PRIMARY KEY,
                created_at TEXT NOT NULL,
                last_applied_sha TEXT,
                last_attempted_sha TEXT,
                paused_at_sha TEXT,
                service_order TEXT NOT NULL DEFAULT '{}',
                conditions TEXT NOT NULL DEFAULT '{}')""",
            """CREATE TABLE attempts (
                id TEXT PRIMARY KEY,
                deployment TEXT NOT NULL REFERENCES deployments(name),
                generation INTEGER,
                commit_sha TEXT,
                author TEXT,
                email TEXT,
                subject TEXT,
                commit_time TEXT,
                started_at TEXT NOT NULL,
                finished_at TEXT,
                status TEXT NOT NULL,
                reason TEXT,
                plan TEXT,
                summary TEXT,
                UNIQUE (deployment, generation))""",
            """CREATE TABLE machines (
                deployment TEXT NOT NULL REFERENCES deployments(name),
                name TEXT NOT NULL,
                target_env TEXT NOT NULL,
                address TEXT,
                state_dir TEXT,
                profile TEXT NOT NULL DEFAULT '[]',
                provider_id TEXT,
                provider_state TEXT,
                provider TEXT NOT NULL DEFAULT '{}',
                host_key TEXT,
                location TEXT,
                connection TEXT NOT NULL DEFAULT '{}',
                updated_at TEXT NOT NULL,
                PRIMARY KEY (deployment, name))""",
            """CREATE TABLE instances (
                deployment TEXT NOT NULL REFERENCES deployments(name),
                key TEXT NOT NULL,
                service TEXT NOT NULL,
                machine TEXT NOT NULL,
                type TEXT NOT NULL,
                identity TEXT NOT NULL,
                inputs TEXT NOT NULL,
                package_path TEXT NOT NULL,
                port INTEGER,
                generation INTEGER,
                request TEXT,
                PRIMARY KEY (deployment, key))""",
            """CREATE TABLE machine_paths (
                deployment TEXT NOT NULL,
                machine TEXT NOT NULL,
                path TEXT NOT NULL,
                content_hash TEXT NOT NULL,
                PRIMARY KEY (deployment, machine, path))""",
            """CREATE TABLE store_paths (
                path TEXT PRIMARY KEY,
                size INTEGER NOT NULL,
                content_hash TEXT NOT NULL,
                built_at TEXT NOT NULL)""",
            """CREATE TABLE allocations (
                key TEXT PRIMARY KEY,
                value TEXT NOT NULL,
                deployment TEXT)""",
            """CREATE TABLE journal (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                attempt_id TEXT NOT NULL REFERENCES attempts(id),
                step TEXT NOT NULL,
                target TEXT,
                action TEXT NOT NULL,
                status TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT '{}',
                at TEXT NOT NULL)""",
            "CREATE INDEX journal_attempt ON journal (attempt_id, id)",
            """CREATE TABLE host_keys (
                host TEXT NOT NULL, port INTEGER NOT NULL, key TEXT NOT NULL,
                first_seen TEXT NOT NULL, PRIMARY KEY (host, port))""",
        ],
    ),
    (
        "generation paths and provisioning",
        [
            # per generation: {machine: [store paths its profile and instances need]}, for gc
            "ALTER TABLE attempts ADD COLUMN machine_paths TEXT",
            # one row per provisioned machine, written before each provider call, so an
            # interrupted create is found again (by its token) rather than duplicated
            """CREATE TABLE provisioning (
                deployment TEXT NOT NULL,
                machine TEXT NOT NULL,
                provider TEXT NOT NULL,
                token TEXT NOT NULL,
                provider_id TEXT,
                state TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT '{}',
                updated_at TEXT NOT NULL,
                PRIMARY KEY (deployment, machine))""",
        ],
    ),
]
