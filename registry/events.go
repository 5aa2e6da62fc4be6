package registry

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/fieldhub/fieldhub/telemetry"
)

const (
	defaultEventLimit = 1000
	maxEventLimit     = 10000
)

// AddEvents stores string-valued metrics in one transaction. An event is
// identified by (device, metric, ts): storing it again is a no-op, so a
// redelivered message is harmless. The first value stored wins.
func (r *Registry) AddEvents(ctx context.Context, evs []telemetry.Event) (err error) {
	defer r.done("add_events", &err)
	if len(evs) == 0 {
		return nil
	}
	for i, e := range evs {
		if e.Device == "" || e.Metric == "" {
			return fmt.Errorf("add events: %w", invalid("event %d: device and metric must be set", i))
		}
	}
	err = r.write(ctx, "add_events", func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, "INSERT OR IGNORE INTO events (device, metric, ts, value) VALUES (?, ?, ?, ?)")
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, e := range evs {
			if _, err := stmt.ExecContext(ctx, e.Device, e.Metric, e.TS, e.Value); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add events: %w", err)
	}
	return nil
}

// Events returns a device's events with from <= ts <= to (unix ms, both
// inclusive, like store.SeriesQuery), oldest first (ties by metric name).
// limit defaults to 1000 and is at most 10000.
func (r *Registry) Events(ctx context.Context, device string, from, to int64, limit int) (evs []telemetry.Event, err error) {
	defer r.done("events", &err)
	rows, err := r.db.QueryContext(ctx, `SELECT metric, ts, value FROM events
		WHERE device = ? AND ts >= ? AND ts <= ? ORDER BY ts, metric LIMIT ?`,
		device, from, to, clampLimit(limit, defaultEventLimit, maxEventLimit))
	if err != nil {
		return nil, fmt.Errorf("events of %q: %w", device, err)
	}
	defer rows.Close()
	for rows.Next() {
		e := telemetry.Event{Device: device}
		if err := rows.Scan(&e.Metric, &e.TS, &e.Value); err != nil {
			return nil, fmt.Errorf("events of %q: %w", device, err)
		}
		evs = append(evs, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("events of %q: %w", device, err)
	}
	return evs, nil
}

// DeleteEventsBefore removes events with ts < before (unix ms; retention)
// and returns how many.
func (r *Registry) DeleteEventsBefore(ctx context.Context, before int64) (n int64, err error) {
	defer r.done("delete_events", &err)
	err = r.write(ctx, "delete_events", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM events WHERE ts < ?", before)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("delete events: %w", err)
	}
	return n, nil
}
