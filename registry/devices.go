package registry

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/fieldhub/fieldhub/telemetry"
)

// Limits on device metadata.
const (
	MaxLabels        = 32
	MaxLabelKeyLen   = 63
	MaxLabelValueLen = 256
	MaxTypeLen       = 64
)

// Device is a registered device.
type Device struct {
	ID        string            `json:"id"`
	Type      string            `json:"type"`
	Labels    map[string]string `json:"labels"`
	CreatedAt time.Time         `json:"created_at"`
	LastSeen  time.Time         `json:"last_seen,omitzero"`
	Online    bool              `json:"online"`
}

// DeviceSpec is what CreateDevice needs.
type DeviceSpec struct {
	ID     string            `json:"id"`
	Type   string            `json:"type"`
	Labels map[string]string `json:"labels"`
}

// DeviceFilter selects a page of devices. All set fields must match.
type DeviceFilter struct {
	Type   string
	Labels map[string]string // every key must have exactly this value
	Online *bool
	Search string // case-insensitive substring of the id
	After  string // keyset cursor: only ids > After (pass the last id of the previous page)
	Limit  int    // default 100, at most 1000
}

// ValidateDeviceSpec checks a spec as CreateDevice does.
func ValidateDeviceSpec(s DeviceSpec) error {
	if err := telemetry.ValidateDeviceID(s.ID); err != nil {
		return invalid("%v", err)
	}
	if err := validateType(s.Type); err != nil {
		return err
	}
	return validateLabels(s.Labels)
}

func validateType(t string) error {
	if len(t) > MaxTypeLen {
		return invalid("device type is %d characters, more than %d", len(t), MaxTypeLen)
	}
	for i := 0; i < len(t); i++ {
		if !idChar(t[i]) {
			return invalid("device type has %q at position %d; allowed are letters, digits, '-', '_', '.' and ':'", t[i], i)
		}
	}
	return nil
}

func idChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	case c == '-', c == '_', c == '.', c == ':':
		return true
	}
	return false
}

// validateLabels: keys start with a letter and hold letters, digits and
// "-_./" (so "app.example.com/role" works); values are short printable
// UTF-8.
func validateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return invalid("%d labels, at most %d allowed", len(labels), MaxLabels)
	}
	for k, v := range labels {
		if err := validateLabelKey(k); err != nil {
			return err
		}
		if len(v) > MaxLabelValueLen {
			return invalid("label %q: value is %d bytes, more than %d", k, len(v), MaxLabelValueLen)
		}
		if !utf8.ValidString(v) {
			return invalid("label %q: value is not valid UTF-8", k)
		}
		for _, c := range v {
			if unicode.IsControl(c) {
				return invalid("label %q: value has control character %q", k, c)
			}
		}
	}
	return nil
}

func validateLabelKey(k string) error {
	if k == "" {
		return invalid("empty label key")
	}
	if len(k) > MaxLabelKeyLen {
		return invalid("label key %q is longer than %d characters", k, MaxLabelKeyLen)
	}
	if c := k[0]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
		return invalid("label key %q must start with a letter", k)
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; !labelKeyChar(c) {
			return invalid("label key %q has %q at position %d; allowed are letters, digits, '-', '_', '.' and '/'", k, c, i)
		}
	}
	return nil
}

func labelKeyChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	case c == '-', c == '_', c == '.', c == '/':
		return true
	}
	return false
}

// CreateDevice registers a device and returns it with its token. The token
// is shown only here; the registry keeps only its hash.
func (r *Registry) CreateDevice(ctx context.Context, spec DeviceSpec) (dev Device, token string, err error) {
	defer r.done("create_device", &err)
	if err := ValidateDeviceSpec(spec); err != nil {
		return Device{}, "", fmt.Errorf("create device: %w", err)
	}
	token, hash, err := newToken(deviceTokenPrefix)
	if err != nil {
		return Device{}, "", fmt.Errorf("create device: %w", err)
	}
	now := r.now()
	err = r.write(ctx, "create_device", func(tx *sql.Tx) error {
		var one int
		err := tx.QueryRowContext(ctx, "SELECT 1 FROM devices WHERE id = ?", spec.ID).Scan(&one)
		if err == nil {
			return fmt.Errorf("device %q: %w", spec.ID, ErrExists)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO devices (id, type, created_at) VALUES (?, ?, ?)",
			spec.ID, spec.Type, now.UnixNano()); err != nil {
			return err
		}
		if err := insertLabels(ctx, tx, spec.ID, spec.Labels); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, "INSERT INTO device_credentials (device_id, token_hash, created_at) VALUES (?, ?, ?)",
			spec.ID, hash[:], now.UnixNano())
		return err
	})
	if err != nil {
		return Device{}, "", fmt.Errorf("create device: %w", err)
	}
	labels := maps.Clone(spec.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	return Device{ID: spec.ID, Type: spec.Type, Labels: labels, CreatedAt: time.Unix(0, now.UnixNano()).UTC()}, token, nil
}

func insertLabels(ctx context.Context, tx *sql.Tx, id string, labels map[string]string) error {
	if len(labels) == 0 {
		return nil
	}
	stmt, err := tx.PrepareContext(ctx, "INSERT INTO device_labels (device_id, key, value) VALUES (?, ?, ?)")
	if err != nil {
		return err
	}
	defer stmt.Close()
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if _, err := stmt.ExecContext(ctx, id, k, labels[k]); err != nil {
			return err
		}
	}
	return nil
}

// SetLabels replaces a device's labels.
func (r *Registry) SetLabels(ctx context.Context, id string, labels map[string]string) (err error) {
	defer r.done("set_labels", &err)
	if err := validateLabels(labels); err != nil {
		return fmt.Errorf("set labels of %q: %w", id, err)
	}
	err = r.write(ctx, "set_labels", func(tx *sql.Tx) error {
		if err := deviceExists(ctx, tx, id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM device_labels WHERE device_id = ?", id); err != nil {
			return err
		}
		return insertLabels(ctx, tx, id, labels)
	})
	if err != nil {
		return fmt.Errorf("set labels of %q: %w", id, err)
	}
	return nil
}

// deviceExists returns a wrapped ErrNotFound when the device is unknown.
func deviceExists(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, id string) error {
	var one int
	err := q.QueryRowContext(ctx, "SELECT 1 FROM devices WHERE id = ?", id).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	return err
}

// deviceColumns is selected by Device and Devices. Labels come as one
// string per device, so a page is one query: pairs separated by ASCII RS
// (0x1e), key and value by US (0x1f). Validation keeps control characters
// out of keys and values, so the separators are unambiguous, and splitting
// costs far less than decoding JSON.
const deviceColumns = `d.id, d.type, d.created_at, d.last_seen, d.online,
	(SELECT group_concat(l.key || char(31) || l.value, char(30)) FROM device_labels l WHERE l.device_id = d.id)`

func scanDevice(row interface{ Scan(...any) error }) (Device, error) {
	var (
		d        Device
		created  int64
		lastSeen sql.NullInt64
		labels   sql.NullString
	)
	if err := row.Scan(&d.ID, &d.Type, &created, &lastSeen, &d.Online, &labels); err != nil {
		return Device{}, err
	}
	d.CreatedAt = time.Unix(0, created).UTC()
	d.LastSeen = fromNanos(lastSeen)
	d.Labels = map[string]string{}
	if labels.Valid && labels.String != "" {
		for pair := range strings.SplitSeq(labels.String, "\x1e") {
			k, v, ok := strings.Cut(pair, "\x1f")
			if !ok {
				return Device{}, fmt.Errorf("labels of %q: malformed %q", d.ID, pair)
			}
			d.Labels[k] = v
		}
	}
	return d, nil
}

// Device returns one device.
func (r *Registry) Device(ctx context.Context, id string) (dev Device, err error) {
	defer r.done("device", &err)
	row := r.db.QueryRowContext(ctx, "SELECT "+deviceColumns+" FROM devices d WHERE d.id = ?", id)
	dev, err = scanDevice(row)
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("device %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return Device{}, fmt.Errorf("device %q: %w", id, err)
	}
	return dev, nil
}

// Devices returns a page of devices ordered by id. To page, pass the last
// id of a page as After of the next filter.
func (r *Registry) Devices(ctx context.Context, f DeviceFilter) (devs []Device, err error) {
	defer r.done("devices", &err)
	if len(f.Labels) > MaxLabels {
		return nil, fmt.Errorf("list devices: %w", invalid("%d label filters, at most %d", len(f.Labels), MaxLabels))
	}
	keys := slices.Sorted(maps.Keys(f.Labels))
	for _, k := range keys {
		if err := validateLabelKey(k); err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
	}
	drive := ""
	if len(keys) > 0 {
		var err error
		if drive, err = r.drivingLabel(ctx, f.Labels, keys); err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
	}
	q, args := devicesQuery(f, keys, drive)
	rows, err := r.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		devs = append(devs, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return devs, nil
}

// devicesQuery builds the page query for f; keys are f's label keys,
// sorted, and drive the one whose index drives the scan ("" without
// label filters).
func devicesQuery(f DeviceFilter, keys []string, drive string) (string, []any) {
	var (
		from    = "devices d"
		orderBy = "d.id"
		where   strings.Builder
		args    []any
	)
	if drive != "" {
		// Drive the scan from one label's index entries, (key, value,
		// device_id), which come in id order: the page ends after Limit
		// matches whether the label is rare or common. Scanning devices
		// by id and probing labels instead is slow for rare labels (the
		// whole table is read to find a handful). CROSS JOIN pins this
		// loop order in SQLite's planner, and ordering by dl.device_id
		// (equal to d.id) lets it skip the sort.
		from = "device_labels dl CROSS JOIN devices d ON d.id = dl.device_id"
		orderBy = "dl.device_id"
		where.WriteString("dl.key = ? AND dl.value = ? AND dl.device_id > ?")
		args = append(args, drive, f.Labels[drive], f.After)
	} else {
		where.WriteString("d.id > ?")
		args = append(args, f.After)
	}
	if f.Type != "" {
		where.WriteString(" AND d.type = ?")
		args = append(args, f.Type)
	}
	if f.Online != nil {
		where.WriteString(" AND d.online = ?")
		args = append(args, *f.Online)
	}
	if f.Search != "" {
		where.WriteString(" AND instr(lower(d.id), lower(?)) > 0")
		args = append(args, f.Search)
	}
	for _, k := range keys {
		if k == drive {
			continue
		}
		where.WriteString(" AND EXISTS (SELECT 1 FROM device_labels l WHERE l.device_id = d.id AND l.key = ? AND l.value = ?)")
		args = append(args, k, f.Labels[k])
	}
	args = append(args, clampLimit(f.Limit, defaultLimit, maxLimit))
	return "SELECT " + deviceColumns + " FROM " + from + " WHERE " + where.String() + " ORDER BY " + orderBy + " LIMIT ?", args
}

// drivingLabel picks the label filter with the fewest matching devices to
// drive the scan; the others are checked per candidate. Counting on the
// (key, value, device_id) index is cheap next to scanning a common label.
func (r *Registry) drivingLabel(ctx context.Context, labels map[string]string, keys []string) (string, error) {
	if len(keys) == 1 {
		return keys[0], nil
	}
	best, bestN := "", -1
	for _, k := range keys {
		var n int
		if err := r.db.QueryRowContext(ctx, "SELECT count(*) FROM device_labels WHERE key = ? AND value = ?", k, labels[k]).Scan(&n); err != nil {
			return "", err
		}
		if bestN < 0 || n < bestN {
			best, bestN = k, n
		}
	}
	return best, nil
}

// CountDevices returns how many devices are registered and how many of them
// are online.
func (r *Registry) CountDevices(ctx context.Context) (total, online int, err error) {
	defer r.done("count_devices", &err)
	if err := r.db.QueryRowContext(ctx, "SELECT count(*), coalesce(sum(online), 0) FROM devices").Scan(&total, &online); err != nil {
		return 0, 0, fmt.Errorf("count devices: %w", err)
	}
	return total, online, nil
}

// DeleteDevice removes a device with its labels, token and twin. Its
// commands stay as history, but those still pending (queued, sent,
// delivered) are cancelled in the same transaction, with a transition
// "device deleted", so they are never delivered to a device re-created
// under the same id. Its events and dead letters stay until retention
// removes them.
func (r *Registry) DeleteDevice(ctx context.Context, id string) (err error) {
	defer r.done("delete_device", &err)
	now := r.now().UnixNano()
	err = r.write(ctx, "delete_device", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM devices WHERE id = ?", id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("device %q: %w", id, ErrNotFound)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO command_transitions (command_id, from_state, to_state, at, detail)
			SELECT id, state, 'cancelled', ?, 'device deleted' FROM commands
			WHERE device = ? AND state IN ('queued', 'sent', 'delivered') ORDER BY seq`, now, id); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE commands SET state = 'cancelled', updated_at = ?, error = 'device deleted'
			WHERE device = ? AND state IN ('queued', 'sent', 'delivered')`, now, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("delete device: %w", err)
	}
	return nil
}

// RotateDeviceToken gives a device a new token; the old one stops working
// at once (for new connections: sessions already open are the broker's
// business).
func (r *Registry) RotateDeviceToken(ctx context.Context, id string) (token string, err error) {
	defer r.done("rotate_device_token", &err)
	token, hash, err := newToken(deviceTokenPrefix)
	if err != nil {
		return "", fmt.Errorf("rotate token: %w", err)
	}
	err = r.write(ctx, "rotate_device_token", func(tx *sql.Tx) error {
		if err := deviceExists(ctx, tx, id); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO device_credentials (device_id, token_hash, created_at) VALUES (?, ?, ?)
			ON CONFLICT (device_id) DO UPDATE SET token_hash = excluded.token_hash, created_at = excluded.created_at`,
			id, hash[:], r.now().UnixNano())
		return err
	})
	if err != nil {
		return "", fmt.Errorf("rotate token: %w", err)
	}
	return token, nil
}

// AuthenticateDevice checks a device's token. An unknown device, a wrong or
// empty token all yield false with a nil error; an error means the check
// could not be made. The hashes are compared in constant time, and a
// missing device is compared against a dummy hash so the compare does not
// reveal which ids exist.
func (r *Registry) AuthenticateDevice(ctx context.Context, id, token string) (ok bool, err error) {
	defer r.done("authenticate_device", &err)
	sum := sha256.Sum256([]byte(token))
	stored := r.dummyHash[:]
	found := false
	if telemetry.ValidateDeviceID(id) == nil {
		var h []byte
		err := r.db.QueryRowContext(ctx, "SELECT token_hash FROM device_credentials WHERE device_id = ?", id).Scan(&h)
		switch {
		case err == nil:
			stored, found = h, true
		case errors.Is(err, sql.ErrNoRows):
		default:
			return false, fmt.Errorf("authenticate device %q: %w", id, err)
		}
	}
	match := subtle.ConstantTimeCompare(sum[:], stored) == 1
	ok = match && found && token != ""
	r.m.auth.WithLabelValues("device", result(ok)).Inc()
	return ok, nil
}

func result(ok bool) string {
	if ok {
		return "ok"
	}
	return "denied"
}

// SetPresence records a device going online or offline at a time. last_seen
// only moves forward. Unknown device: ErrNotFound.
func (r *Registry) SetPresence(ctx context.Context, id string, online bool, at time.Time) (err error) {
	defer r.done("set_presence", &err)
	at = r.nowOr(at)
	err = r.write(ctx, "set_presence", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "UPDATE devices SET online = ?, last_seen = max(coalesce(last_seen, 0), ?) WHERE id = ?",
			online, at.UnixNano(), id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("device %q: %w", id, ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set presence: %w", err)
	}
	return nil
}

// TouchLastSeen moves last_seen forward for many devices in one
// transaction. Unknown ids (devices deleted meanwhile) are skipped.
func (r *Registry) TouchLastSeen(ctx context.Context, seen map[string]time.Time) (err error) {
	defer r.done("touch_last_seen", &err)
	if len(seen) == 0 {
		return nil
	}
	err = r.write(ctx, "touch_last_seen", func(tx *sql.Tx) error {
		stmt, err := tx.PrepareContext(ctx, "UPDATE devices SET last_seen = max(coalesce(last_seen, 0), ?) WHERE id = ?")
		if err != nil {
			return err
		}
		defer stmt.Close()
		for id, at := range seen {
			if at.IsZero() {
				continue
			}
			if _, err := stmt.ExecContext(ctx, at.UnixNano(), id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("touch last seen: %w", err)
	}
	return nil
}

// ResetPresence marks every device offline. The hub calls it at start,
// when nothing is connected yet.
func (r *Registry) ResetPresence(ctx context.Context) (err error) {
	defer r.done("reset_presence", &err)
	err = r.write(ctx, "reset_presence", func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE devices SET online = 0 WHERE online <> 0")
		return err
	})
	if err != nil {
		return fmt.Errorf("reset presence: %w", err)
	}
	return nil
}
