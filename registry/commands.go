package registry

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fieldhub/fieldhub/telemetry"
)

// CommandState is a command's place in its lifecycle. The lifecycle itself
// (which transitions are allowed when) is package command's business; the
// registry stores states and makes each transition atomic.
type CommandState string

const (
	CommandQueued    CommandState = "queued"
	CommandSent      CommandState = "sent"
	CommandDelivered CommandState = "delivered"
	CommandSucceeded CommandState = "succeeded"
	CommandFailed    CommandState = "failed"
	CommandExpired   CommandState = "expired"
	CommandCancelled CommandState = "cancelled"
)

// Valid reports whether s is one of the known states.
func (s CommandState) Valid() bool {
	switch s {
	case CommandQueued, CommandSent, CommandDelivered, CommandSucceeded, CommandFailed, CommandExpired, CommandCancelled:
		return true
	}
	return false
}

// Pending reports whether a command in state s may still reach its device.
func (s CommandState) Pending() bool {
	return s == CommandQueued || s == CommandSent || s == CommandDelivered
}

const (
	maxCommandIDLen   = 64
	maxCommandNameLen = 64
	maxIdemKeyLen     = 128
)

// Command is one entry of the command ledger.
type Command struct {
	ID             string          `json:"id"`
	Device         string          `json:"device"`
	Name           string          `json:"name"`
	Params         json.RawMessage `json:"params"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
	State          CommandState    `json:"state"`
	CreatedAt      time.Time       `json:"created_at"`
	UpdatedAt      time.Time       `json:"updated_at"`
	ExpiresAt      time.Time       `json:"expires_at,omitzero"`
	Result         json.RawMessage `json:"result,omitempty"`
	Error          string          `json:"error,omitempty"`
}

// Transition is one recorded state change. The first transition of a
// command has From "" and To "queued".
type Transition struct {
	CommandID string       `json:"command_id"`
	From      CommandState `json:"from"`
	To        CommandState `json:"to"`
	At        time.Time    `json:"at"`
	Detail    string       `json:"detail,omitempty"`
}

// CommandFilter selects commands, newest first.
type CommandFilter struct {
	Device        string
	States        []CommandState // any of these; empty means all
	BeforeCreated time.Time      // only commands created before this (paging)
	Limit         int            // default 100, at most 1000
}

// validateCommandID: ids go into reply topics (devices/{id}/replies/{cmd}),
// so they use the device id charset and are short.
func validateCommandID(id string) error {
	if id == "" || len(id) > maxCommandIDLen {
		return invalid("command id must be 1 to %d characters", maxCommandIDLen)
	}
	for i := 0; i < len(id); i++ {
		if !idChar(id[i]) {
			return invalid("command id has %q at position %d; allowed are letters, digits, '-', '_', '.' and ':'", id[i], i)
		}
	}
	return nil
}

func validateCommandName(name string) error {
	if name == "" || len(name) > maxCommandNameLen {
		return invalid("command name must be 1 to %d characters", maxCommandNameLen)
	}
	for i := 0; i < len(name); i++ {
		if !idChar(name[i]) {
			return invalid("command name has %q at position %d; allowed are letters, digits, '-', '_', '.' and ':'", name[i], i)
		}
	}
	return nil
}

const commandColumns = "id, device, name, params, coalesce(idempotency_key, ''), state, created_at, updated_at, expires_at, result, error"

func scanCommand(row interface{ Scan(...any) error }) (Command, error) {
	var (
		c                Command
		params           string
		result           sql.NullString
		created, updated int64
		expires          sql.NullInt64
	)
	if err := row.Scan(&c.ID, &c.Device, &c.Name, &params, &c.IdempotencyKey, &c.State, &created, &updated, &expires, &result, &c.Error); err != nil {
		return Command{}, err
	}
	c.Params = json.RawMessage(params)
	if result.Valid {
		c.Result = json.RawMessage(result.String)
	}
	c.CreatedAt = time.Unix(0, created).UTC()
	c.UpdatedAt = time.Unix(0, updated).UTC()
	c.ExpiresAt = fromNanos(expires)
	return c, nil
}

type queryRower interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}

func getCommand(ctx context.Context, q queryRower, id string) (Command, error) {
	c, err := scanCommand(q.QueryRowContext(ctx, "SELECT "+commandColumns+" FROM commands WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return Command{}, fmt.Errorf("command %q: %w", id, ErrNotFound)
	}
	return c, err
}

// InsertCommand adds a command to the ledger in state queued and records
// that first transition in the same transaction. An empty ID gets a random
// one; a zero CreatedAt is now; nil Params is {}. If IdempotencyKey is set
// and the device already has a command with that key, that command is
// returned with created false and nothing is written (its params are not
// compared). Unknown device: ErrNotFound; an ID in use: ErrExists.
func (r *Registry) InsertCommand(ctx context.Context, c Command) (cmd Command, created bool, err error) {
	defer r.done("insert_command", &err)
	if c.ID == "" {
		if c.ID, err = randomID(16); err != nil {
			return Command{}, false, fmt.Errorf("insert command: %w", err)
		}
	}
	if err := r.validateNewCommand(c); err != nil {
		return Command{}, false, fmt.Errorf("insert command: %w", err)
	}
	if len(c.Params) == 0 {
		c.Params = json.RawMessage("{}")
	}
	c.State = CommandQueued
	c.CreatedAt = r.nowOr(c.CreatedAt)
	c.UpdatedAt = c.CreatedAt
	c.Result, c.Error = nil, ""
	var key any
	if c.IdempotencyKey != "" {
		key = c.IdempotencyKey
	}

	err = r.write(ctx, "insert_command", func(tx *sql.Tx) error {
		if err := deviceExists(ctx, tx, c.Device); err != nil {
			return err
		}
		if c.IdempotencyKey != "" {
			existing, err := scanCommand(tx.QueryRowContext(ctx,
				"SELECT "+commandColumns+" FROM commands WHERE device = ? AND idempotency_key = ?", c.Device, c.IdempotencyKey))
			if err == nil {
				cmd = existing
				return nil
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		var one int
		if err := tx.QueryRowContext(ctx, "SELECT 1 FROM commands WHERE id = ?", c.ID).Scan(&one); err == nil {
			return fmt.Errorf("command %q: %w", c.ID, ErrExists)
		} else if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO commands
			(id, device, name, params, idempotency_key, state, created_at, updated_at, expires_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			c.ID, c.Device, c.Name, string(c.Params), key, c.State,
			c.CreatedAt.UnixNano(), c.UpdatedAt.UnixNano(), timeArg(c.ExpiresAt)); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO command_transitions (command_id, from_state, to_state, at) VALUES (?, '', ?, ?)",
			c.ID, c.State, c.CreatedAt.UnixNano()); err != nil {
			return err
		}
		cmd, created = c, true
		return nil
	})
	if err != nil {
		return Command{}, false, fmt.Errorf("insert command: %w", err)
	}
	if created {
		// Return what a read would: times normalized to UTC.
		cmd.CreatedAt = time.Unix(0, cmd.CreatedAt.UnixNano()).UTC()
		cmd.UpdatedAt = cmd.CreatedAt
		if !cmd.ExpiresAt.IsZero() {
			cmd.ExpiresAt = time.Unix(0, cmd.ExpiresAt.UnixNano()).UTC()
		}
	}
	return cmd, created, nil
}

func (r *Registry) validateNewCommand(c Command) error {
	if err := telemetry.ValidateDeviceID(c.Device); err != nil {
		return invalid("%v", err)
	}
	if err := validateCommandID(c.ID); err != nil {
		return err
	}
	if err := validateCommandName(c.Name); err != nil {
		return err
	}
	if len(c.Params) > 0 && !json.Valid(c.Params) {
		return invalid("command params are not valid JSON")
	}
	if len(c.IdempotencyKey) > maxIdemKeyLen {
		return invalid("idempotency key is longer than %d bytes", maxIdemKeyLen)
	}
	if c.State != "" && c.State != CommandQueued {
		return invalid("a new command is queued, not %q", c.State)
	}
	return nil
}

// TransitionCommand moves a command to state to, but only if its current
// state is one of from; otherwise it returns ErrConflict (wrapped, naming
// the current state) and changes nothing. The check, the update and the
// Transition row happen in one transaction. A non-empty result replaces
// the stored result, a non-empty errText the stored error; a zero at is
// now. It returns the updated command.
func (r *Registry) TransitionCommand(ctx context.Context, id string, from []CommandState, to CommandState, at time.Time,
	result json.RawMessage, errText, detail string) (cmd Command, err error) {
	defer r.done("transition_command", &err)
	if !to.Valid() {
		return Command{}, fmt.Errorf("transition command %q: %w", id, invalid("unknown state %q", to))
	}
	if len(from) == 0 {
		return Command{}, fmt.Errorf("transition command %q: %w", id, invalid("no from states"))
	}
	for _, s := range from {
		if !s.Valid() {
			return Command{}, fmt.Errorf("transition command %q: %w", id, invalid("unknown state %q", s))
		}
	}
	if len(result) > 0 && !json.Valid(result) {
		return Command{}, fmt.Errorf("transition command %q: %w", id, invalid("result is not valid JSON"))
	}
	at = r.nowOr(at)
	var res any
	if len(result) > 0 {
		res = string(result)
	}

	err = r.write(ctx, "transition_command", func(tx *sql.Tx) error {
		var cur CommandState
		if err := tx.QueryRowContext(ctx, "SELECT state FROM commands WHERE id = ?", id).Scan(&cur); errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("command %q: %w", id, ErrNotFound)
		} else if err != nil {
			return err
		}
		if !containsState(from, cur) {
			return fmt.Errorf("command %q is %s, not %s: %w", id, cur, joinStates(from), ErrConflict)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE commands SET state = ?, updated_at = ?,
			result = coalesce(?, result), error = CASE WHEN ? <> '' THEN ? ELSE error END WHERE id = ?`,
			to, at.UnixNano(), res, errText, errText, id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO command_transitions (command_id, from_state, to_state, at, detail) VALUES (?, ?, ?, ?, ?)",
			id, cur, to, at.UnixNano(), detail); err != nil {
			return err
		}
		cmd, err = getCommand(ctx, tx, id)
		return err
	})
	if err != nil {
		return Command{}, fmt.Errorf("transition command: %w", err)
	}
	return cmd, nil
}

func containsState(states []CommandState, s CommandState) bool {
	for _, x := range states {
		if x == s {
			return true
		}
	}
	return false
}

func joinStates(states []CommandState) string {
	ss := make([]string, len(states))
	for i, s := range states {
		ss[i] = string(s)
	}
	return strings.Join(ss, "|")
}

// Command returns one command.
func (r *Registry) Command(ctx context.Context, id string) (cmd Command, err error) {
	defer r.done("command", &err)
	cmd, err = getCommand(ctx, r.db, id)
	if err != nil {
		return Command{}, fmt.Errorf("get command: %w", err)
	}
	return cmd, nil
}

// Commands returns commands newest first (by creation time, ties by
// insertion order).
func (r *Registry) Commands(ctx context.Context, f CommandFilter) (cmds []Command, err error) {
	defer r.done("commands", &err)
	var (
		where = []string{"1 = 1"}
		args  []any
	)
	if f.Device != "" {
		where = append(where, "device = ?")
		args = append(args, f.Device)
	}
	if len(f.States) > 0 {
		ph := make([]string, len(f.States))
		for i, s := range f.States {
			if !s.Valid() {
				return nil, fmt.Errorf("list commands: %w", invalid("unknown state %q", s))
			}
			ph[i] = "?"
			args = append(args, s)
		}
		where = append(where, "state IN ("+strings.Join(ph, ", ")+")")
	}
	if !f.BeforeCreated.IsZero() {
		where = append(where, "created_at < ?")
		args = append(args, f.BeforeCreated.UnixNano())
	}
	args = append(args, clampLimit(f.Limit, defaultLimit, maxLimit))
	return r.queryCommands(ctx, "list commands",
		"SELECT "+commandColumns+" FROM commands WHERE "+strings.Join(where, " AND ")+" ORDER BY created_at DESC, seq DESC LIMIT ?", args...)
}

// PendingCommands returns the commands still on their way (queued, sent,
// delivered) of one device, or of all devices when device is "", oldest
// first: by creation time, ties by insertion order. Expiry is not applied
// here; the command package expires what has timed out.
func (r *Registry) PendingCommands(ctx context.Context, device string) (cmds []Command, err error) {
	defer r.done("pending_commands", &err)
	// The state list must match the partial index commands_pending.
	q := "SELECT " + commandColumns + " FROM commands WHERE state IN ('queued', 'sent', 'delivered')"
	var args []any
	if device != "" {
		q += " AND device = ?"
		args = append(args, device)
	}
	return r.queryCommands(ctx, "pending commands", q+" ORDER BY created_at, seq", args...)
}

func (r *Registry) queryCommands(ctx context.Context, what, q string, args ...any) ([]Command, error) {
	rows, err := r.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	var cmds []Command
	for rows.Next() {
		c, err := scanCommand(rows)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		cmds = append(cmds, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return cmds, nil
}

// CommandHistory returns a command's transitions, oldest first.
func (r *Registry) CommandHistory(ctx context.Context, id string) (ts []Transition, err error) {
	defer r.done("command_history", &err)
	// A read-only (deferred) transaction: one snapshot for both queries.
	tx, err := r.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("command history: %w", err)
	}
	defer tx.Rollback()
	var one int
	if err := tx.QueryRowContext(ctx, "SELECT 1 FROM commands WHERE id = ?", id).Scan(&one); errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("command history: command %q: %w", id, ErrNotFound)
	} else if err != nil {
		return nil, fmt.Errorf("command history: %w", err)
	}
	rows, err := tx.QueryContext(ctx, "SELECT from_state, to_state, at, detail FROM command_transitions WHERE command_id = ? ORDER BY seq", id)
	if err != nil {
		return nil, fmt.Errorf("command history: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		t := Transition{CommandID: id}
		var at int64
		if err := rows.Scan(&t.From, &t.To, &at, &t.Detail); err != nil {
			return nil, fmt.Errorf("command history: %w", err)
		}
		t.At = time.Unix(0, at).UTC()
		ts = append(ts, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("command history: %w", err)
	}
	return ts, nil
}
