package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

const maxReasonLen = 64

// DeadLetter is a rejected message, kept with its raw payload so it can be
// inspected and replayed once the cause is fixed.
type DeadLetter struct {
	ID          int64     `json:"id"`
	Device      string    `json:"device"`
	Topic       string    `json:"topic"`
	Payload     []byte    `json:"payload"`
	Reason      string    `json:"reason"` // short code, e.g. "bad_json"
	Detail      string    `json:"detail"` // human-readable message
	ReceivedAt  time.Time `json:"received_at"`
	ReplayedAt  time.Time `json:"replayed_at,omitzero"` // zero if never replayed
	ReplayError string    `json:"replay_error,omitempty"`
}

// Replayed reports whether the dead letter was replayed successfully.
func (d DeadLetter) Replayed() bool { return !d.ReplayedAt.IsZero() && d.ReplayError == "" }

// DeadLetterFilter selects a page of dead letters, ordered by id.
type DeadLetterFilter struct {
	Device string
	Reason string
	// IncludeReplayed also returns dead letters replayed successfully.
	// Those whose replay failed are always included: they are still not
	// stored.
	IncludeReplayed bool
	AfterID         int64 // keyset cursor: only ids > AfterID
	Limit           int   // default 100, at most 1000
}

// AddDeadLetters stores rejected messages in one transaction and sets the
// ID of each element of dls. A zero ReceivedAt is set to now.
func (r *Registry) AddDeadLetters(ctx context.Context, dls []DeadLetter) (err error) {
	defer r.done("add_dead_letters", &err)
	if len(dls) == 0 {
		return nil
	}
	for i, d := range dls {
		if d.Reason == "" || len(d.Reason) > maxReasonLen {
			return fmt.Errorf("add dead letters: %w", invalid("dead letter %d: reason must be 1 to %d bytes", i, maxReasonLen))
		}
	}
	now := r.now()
	ids := make([]int64, len(dls))
	err = r.write(ctx, "add_dead_letters", func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO dead_letters (device, topic, payload, reason, detail, received_at)
			VALUES (?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for i, d := range dls {
			payload := d.Payload
			if payload == nil {
				payload = []byte{} // NOT NULL column
			}
			at := d.ReceivedAt
			if at.IsZero() {
				at = now
			}
			res, err := stmt.ExecContext(ctx, d.Device, d.Topic, payload, d.Reason, d.Detail, at.UnixNano())
			if err != nil {
				return err
			}
			if ids[i], err = res.LastInsertId(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add dead letters: %w", err)
	}
	for i := range dls {
		dls[i].ID = ids[i]
		if dls[i].ReceivedAt.IsZero() {
			dls[i].ReceivedAt = time.Unix(0, now.UnixNano()).UTC()
		}
	}
	return nil
}

const deadLetterColumns = "id, device, topic, payload, reason, detail, received_at, replayed_at, replay_error"

func scanDeadLetter(row interface{ Scan(...any) error }) (DeadLetter, error) {
	var (
		d        DeadLetter
		received int64
		replayed sql.NullInt64
	)
	if err := row.Scan(&d.ID, &d.Device, &d.Topic, &d.Payload, &d.Reason, &d.Detail, &received, &replayed, &d.ReplayError); err != nil {
		return DeadLetter{}, err
	}
	d.ReceivedAt = time.Unix(0, received).UTC()
	d.ReplayedAt = fromNanos(replayed)
	return d, nil
}

// DeadLetters returns a page of dead letters ordered by id.
func (r *Registry) DeadLetters(ctx context.Context, f DeadLetterFilter) (dls []DeadLetter, err error) {
	defer r.done("dead_letters", &err)
	var (
		where strings.Builder
		args  []any
	)
	where.WriteString("id > ?")
	args = append(args, f.AfterID)
	if f.Device != "" {
		where.WriteString(" AND device = ?")
		args = append(args, f.Device)
	}
	if f.Reason != "" {
		where.WriteString(" AND reason = ?")
		args = append(args, f.Reason)
	}
	if !f.IncludeReplayed {
		where.WriteString(" AND (replayed_at IS NULL OR replay_error <> '')")
	}
	args = append(args, clampLimit(f.Limit, defaultLimit, maxLimit))
	rows, err := r.db.QueryContext(ctx, "SELECT "+deadLetterColumns+" FROM dead_letters WHERE "+where.String()+" ORDER BY id LIMIT ?", args...)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		d, err := scanDeadLetter(rows)
		if err != nil {
			return nil, fmt.Errorf("list dead letters: %w", err)
		}
		dls = append(dls, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	return dls, nil
}

// DeadLetter returns one dead letter.
func (r *Registry) DeadLetter(ctx context.Context, id int64) (dl DeadLetter, err error) {
	defer r.done("dead_letter", &err)
	dl, err = scanDeadLetter(r.db.QueryRowContext(ctx, "SELECT "+deadLetterColumns+" FROM dead_letters WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return DeadLetter{}, fmt.Errorf("dead letter %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return DeadLetter{}, fmt.Errorf("dead letter %d: %w", id, err)
	}
	return dl, nil
}

// MarkReplayed records a replay attempt: replayErr "" means the message was
// stored this time; otherwise it says why it was refused again.
func (r *Registry) MarkReplayed(ctx context.Context, id int64, at time.Time, replayErr string) (err error) {
	defer r.done("mark_replayed", &err)
	at = r.nowOr(at)
	err = r.write(ctx, "mark_replayed", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE dead_letters SET replayed_at = ?, replay_error = ? WHERE id = ?", at.UnixNano(), replayErr, id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("dead letter %d: %w", id, ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark replayed: %w", err)
	}
	return nil
}

// DeleteDeadLettersBefore removes dead letters received before t (retention)
// and returns how many.
func (r *Registry) DeleteDeadLettersBefore(ctx context.Context, t time.Time) (n int64, err error) {
	defer r.done("delete_dead_letters", &err)
	err = r.write(ctx, "delete_dead_letters", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM dead_letters WHERE received_at < ?", t.UnixNano())
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("delete dead letters: %w", err)
	}
	return n, nil
}
