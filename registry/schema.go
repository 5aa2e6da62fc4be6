package registry

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations are the schema steps, in order; step i brings the schema to
// version i+1. Never edit a released step: append a new one.
var migrations = []string{
	// 1: initial schema.
	`
CREATE TABLE devices (
	id         TEXT PRIMARY KEY NOT NULL,
	type       TEXT NOT NULL DEFAULT '',
	created_at INTEGER NOT NULL,
	last_seen  INTEGER,
	online     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX devices_type ON devices (type, id);
CREATE INDEX devices_online ON devices (online, id);

CREATE TABLE device_labels (
	device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	key       TEXT NOT NULL,
	value     TEXT NOT NULL,
	PRIMARY KEY (device_id, key)
) WITHOUT ROWID;
CREATE INDEX device_labels_kv ON device_labels (key, value, device_id);

-- One token per device; only its SHA-256 is stored.
CREATE TABLE device_credentials (
	device_id  TEXT PRIMARY KEY NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	token_hash BLOB NOT NULL,
	created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE api_tokens (
	id         TEXT PRIMARY KEY NOT NULL,
	name       TEXT NOT NULL,
	token_hash BLOB NOT NULL UNIQUE,
	created_at INTEGER NOT NULL,
	last_used  INTEGER
);

-- No foreign key to devices: dead letters, events and commands are history
-- and outlive a deleted device (retention removes them).
CREATE TABLE dead_letters (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	device       TEXT NOT NULL,
	topic        TEXT NOT NULL,
	payload      BLOB NOT NULL,
	reason       TEXT NOT NULL,
	detail       TEXT NOT NULL,
	received_at  INTEGER NOT NULL,
	replayed_at  INTEGER,
	replay_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX dead_letters_device ON dead_letters (device, id);
CREATE INDEX dead_letters_reason ON dead_letters (reason, id);
CREATE INDEX dead_letters_received ON dead_letters (received_at);

-- (device, ts, metric) is unique, the same set as (device, metric, ts); this
-- column order also serves "events of a device in a time range".
CREATE TABLE events (
	device TEXT NOT NULL,
	metric TEXT NOT NULL,
	ts     INTEGER NOT NULL,
	value  TEXT NOT NULL,
	PRIMARY KEY (device, ts, metric)
) WITHOUT ROWID;
CREATE INDEX events_ts ON events (ts);

-- seq is the monotonic insertion order that breaks created_at ties.
CREATE TABLE commands (
	seq             INTEGER PRIMARY KEY AUTOINCREMENT,
	id              TEXT NOT NULL UNIQUE,
	device          TEXT NOT NULL,
	name            TEXT NOT NULL,
	params          TEXT NOT NULL,
	idempotency_key TEXT,
	state           TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'delivered', 'succeeded', 'failed', 'expired', 'cancelled')),
	created_at      INTEGER NOT NULL,
	updated_at      INTEGER NOT NULL,
	expires_at      INTEGER,
	result          TEXT,
	error           TEXT NOT NULL DEFAULT '',
	UNIQUE (device, idempotency_key)
);
CREATE INDEX commands_device_created ON commands (device, created_at, seq);
CREATE INDEX commands_created ON commands (created_at, seq);
CREATE INDEX commands_pending ON commands (device, created_at, seq)
	WHERE state IN ('queued', 'sent', 'delivered');

CREATE TABLE command_transitions (
	seq        INTEGER PRIMARY KEY AUTOINCREMENT,
	command_id TEXT NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
	from_state TEXT NOT NULL,
	to_state   TEXT NOT NULL,
	at         INTEGER NOT NULL,
	detail     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX command_transitions_command ON command_transitions (command_id, seq);

CREATE TABLE twins (
	device              TEXT PRIMARY KEY NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
	desired             TEXT NOT NULL DEFAULT '{}',
	desired_version     INTEGER NOT NULL DEFAULT 0,
	desired_updated_at  INTEGER,
	reported            TEXT NOT NULL DEFAULT '{}',
	reported_version    INTEGER NOT NULL DEFAULT 0,
	reported_updated_at INTEGER
) WITHOUT ROWID;
`,
}

// migrate applies the steps the database does not have yet, all in one
// write transaction: a crash leaves the old schema, and two processes
// opening a fresh file at once cannot both apply a step (BEGIN IMMEDIATE
// makes the second wait, then it finds the steps recorded). It returns the
// schema version before and after.
func (r *Registry) migrate(ctx context.Context, steps []string) (from, to int, err error) {
	err = r.write(ctx, "migrate", func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
			version    INTEGER PRIMARY KEY NOT NULL,
			applied_at INTEGER NOT NULL
		)`); err != nil {
			return fmt.Errorf("create schema_version: %w", err)
		}
		var cur sql.NullInt64
		if err := tx.QueryRowContext(ctx, "SELECT max(version) FROM schema_version").Scan(&cur); err != nil {
			return fmt.Errorf("read schema version: %w", err)
		}
		from = int(cur.Int64)
		to = from
		if from > len(steps) {
			return fmt.Errorf("database schema version %d is newer than this fieldhub supports (%d); upgrade fieldhub", from, len(steps))
		}
		for v := from + 1; v <= len(steps); v++ {
			if _, err := tx.ExecContext(ctx, steps[v-1]); err != nil {
				return fmt.Errorf("migration %d: %w", v, err)
			}
			if _, err := tx.ExecContext(ctx, "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)", v, r.now().UnixNano()); err != nil {
				return fmt.Errorf("record migration %d: %w", v, err)
			}
			to = v
		}
		return nil
	})
	return from, to, err
}

// SchemaVersion returns the schema version recorded in the database.
func (r *Registry) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	if err := r.db.QueryRowContext(ctx, "SELECT max(version) FROM schema_version").Scan(&v); err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	return int(v.Int64), nil
}
