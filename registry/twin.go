package registry

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// MaxTwinDocBytes bounds a twin document; twins are small configuration
// and status objects, not a data store.
const MaxTwinDocBytes = 64 << 10

// TwinDoc is one side of a twin: a JSON object and its version, which
// increments by one on every write (0: never written).
type TwinDoc struct {
	Doc       json.RawMessage `json:"doc"`
	Version   int64           `json:"version"`
	UpdatedAt time.Time       `json:"updated_at,omitzero"`
}

// Twin is a device's desired (set by operators) and reported (sent by the
// device) state.
type Twin struct {
	Device   string  `json:"device"`
	Desired  TwinDoc `json:"desired"`
	Reported TwinDoc `json:"reported"`
}

func validateTwinDoc(doc json.RawMessage) error {
	if len(doc) > MaxTwinDocBytes {
		return invalid("twin document is %d bytes, more than %d", len(doc), MaxTwinDocBytes)
	}
	if !json.Valid(doc) {
		return invalid("twin document is not valid JSON")
	}
	if t := bytes.TrimLeft(doc, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return invalid("twin document must be a JSON object")
	}
	return nil
}

// SetDesired replaces a device's desired document and returns it with its
// new version. Unknown device: ErrNotFound.
func (r *Registry) SetDesired(ctx context.Context, device string, doc json.RawMessage, at time.Time) (td TwinDoc, err error) {
	defer r.done("set_desired", &err)
	td, err = r.setTwin(ctx, "set_desired", "desired", device, doc, at)
	if err != nil {
		return TwinDoc{}, fmt.Errorf("set desired: %w", err)
	}
	return td, nil
}

// SetReported replaces a device's reported document and returns it with its
// new version. Unknown device: ErrNotFound.
func (r *Registry) SetReported(ctx context.Context, device string, doc json.RawMessage, at time.Time) (td TwinDoc, err error) {
	defer r.done("set_reported", &err)
	td, err = r.setTwin(ctx, "set_reported", "reported", device, doc, at)
	if err != nil {
		return TwinDoc{}, fmt.Errorf("set reported: %w", err)
	}
	return td, nil
}

// setTwin writes one side; side is the constant "desired" or "reported",
// never user input, so it may be spliced into the SQL.
func (r *Registry) setTwin(ctx context.Context, op, side, device string, doc json.RawMessage, at time.Time) (TwinDoc, error) {
	if err := validateTwinDoc(doc); err != nil {
		return TwinDoc{}, err
	}
	at = r.nowOr(at)
	var version int64
	err := r.write(ctx, op, func(tx *sql.Tx) error {
		if err := deviceExists(ctx, tx, device); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `INSERT INTO twins (device, `+side+`, `+side+`_version, `+side+`_updated_at)
			VALUES (?, ?, 1, ?)
			ON CONFLICT (device) DO UPDATE SET `+side+` = excluded.`+side+`,
				`+side+`_version = `+side+`_version + 1,
				`+side+`_updated_at = excluded.`+side+`_updated_at
			RETURNING `+side+`_version`,
			device, string(doc), at.UnixNano()).Scan(&version)
	})
	if err != nil {
		return TwinDoc{}, err
	}
	return TwinDoc{Doc: bytes.Clone(doc), Version: version, UpdatedAt: time.Unix(0, at.UnixNano()).UTC()}, nil
}

// Twin returns a device's twin; a side never written is {} at version 0.
// Unknown device: ErrNotFound.
func (r *Registry) Twin(ctx context.Context, device string) (tw Twin, err error) {
	defer r.done("twin", &err)
	var (
		desired, reported       string
		desiredAt, reportedAt   sql.NullInt64
		desiredVer, reportedVer int64
	)
	// LEFT JOIN: a device without a twin row gets the defaults; no device
	// row at all means ErrNotFound. One statement, one snapshot.
	err = r.db.QueryRowContext(ctx, `SELECT coalesce(t.desired, '{}'), coalesce(t.desired_version, 0), t.desired_updated_at,
			coalesce(t.reported, '{}'), coalesce(t.reported_version, 0), t.reported_updated_at
		FROM devices d LEFT JOIN twins t ON t.device = d.id WHERE d.id = ?`, device).
		Scan(&desired, &desiredVer, &desiredAt, &reported, &reportedVer, &reportedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return Twin{}, fmt.Errorf("twin: device %q: %w", device, ErrNotFound)
	}
	if err != nil {
		return Twin{}, fmt.Errorf("twin of %q: %w", device, err)
	}
	return Twin{
		Device:   device,
		Desired:  TwinDoc{Doc: json.RawMessage(desired), Version: desiredVer, UpdatedAt: fromNanos(desiredAt)},
		Reported: TwinDoc{Doc: json.RawMessage(reported), Version: reportedVer, UpdatedAt: fromNanos(reportedAt)},
	}, nil
}
