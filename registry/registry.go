// Package registry is fieldhub's relational store: devices and their
// credentials, operator API tokens, dead letters, string events, the command
// ledger and twin documents. It keeps everything in one SQLite file
// (data_dir/registry.db) through the pure-Go driver modernc.org/sqlite, so no
// cgo is needed.
//
// Several processes may open the same file at once (the running hub and the
// `fieldhub device add` CLI). The file is in WAL mode, so readers never block
// the writer; writers are serialized by SQLite's single write lock, taken at
// BEGIN (BEGIN IMMEDIATE) and waited for under busy_timeout. Inside one
// process, writes are additionally queued on a semaphore so they wait in Go
// (honouring the context) instead of in SQLite's sleep-and-retry busy loop.
//
// Times are stored as unix nanoseconds (NULL for the zero time) and returned
// in UTC.
package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Sentinel errors. Methods wrap them with context; test with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrConflict = errors.New("conflict")
	// ErrInvalid marks bad input (an invalid id, label, JSON document, ...).
	// The HTTP API maps it to 400.
	ErrInvalid = errors.New("invalid input")
)

const (
	// busyTimeout bounds how long a write waits for another process (or
	// connection) holding SQLite's write lock. Registry transactions are
	// short, so reaching it means something is stuck.
	busyTimeout = 10 * time.Second
	// maxOpenConns: WAL lets readers run concurrently with the one writer;
	// a handful of connections is plenty on a small gateway.
	maxOpenConns = 4

	defaultLimit = 100
	maxLimit     = 1000
)

// Registry is the SQLite-backed registry. All methods are safe for
// concurrent use.
type Registry struct {
	db     *sql.DB
	path   string
	logger *slog.Logger
	m      *metrics
	// wsem serializes this process's write transactions (capacity 1).
	wsem chan struct{}
	// dummyHash is compared against when a device or token does not exist,
	// so a miss costs the same constant-time compare as a hit.
	dummyHash [sha256.Size]byte
	now       func() time.Time
}

// Option configures Open.
type Option func(*options)

type options struct {
	reg prometheus.Registerer
}

// WithRegisterer registers the registry's metrics (fieldhub_registry_*) with
// reg. Without it the metrics are kept but not exported.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(o *options) { o.reg = reg }
}

// Open opens (creating if needed) the registry database at path and brings
// its schema up to date. The file and its parent directory are created with
// modes 0600 and 0700; SQLite gives the -wal and -shm files the database
// file's mode.
func Open(ctx context.Context, path string, logger *slog.Logger, opts ...Option) (*Registry, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if path == "" {
		return nil, errors.New("open registry: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open registry: %w", err)
	}
	if err := prepareFile(abs, logger); err != nil {
		return nil, fmt.Errorf("open registry: %w", err)
	}

	db, err := sql.Open("sqlite", dsn(abs))
	if err != nil {
		return nil, fmt.Errorf("open registry %s: %w", abs, err)
	}
	db.SetMaxOpenConns(maxOpenConns)
	db.SetMaxIdleConns(maxOpenConns)
	db.SetConnMaxLifetime(0)

	r := &Registry{
		db:     db,
		path:   abs,
		logger: logger,
		m:      newMetrics(),
		wsem:   make(chan struct{}, 1),
		now:    time.Now,
	}
	if _, err := rand.Read(r.dummyHash[:]); err != nil {
		db.Close()
		return nil, fmt.Errorf("open registry: %w", err)
	}

	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		db.Close()
		return nil, fmt.Errorf("open registry %s: %w", abs, err)
	}
	if mode != "wal" {
		db.Close()
		return nil, fmt.Errorf("open registry %s: journal mode is %q, want wal", abs, mode)
	}

	from, to, err := r.migrate(ctx, migrations)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open registry %s: %w", abs, err)
	}
	if o.reg != nil {
		if err := r.m.register(o.reg); err != nil {
			db.Close()
			return nil, fmt.Errorf("open registry: register metrics: %w", err)
		}
	}
	if from != to {
		logger.Info("registry schema migrated", "path", abs, "from_version", from, "to_version", to)
	}
	logger.Debug("registry opened", "path", abs, "schema_version", to)
	return r, nil
}

// dsn builds the driver's URI. Pragmas are set per connection by the driver;
// _txlock=immediate makes every read-write transaction take the write lock
// at BEGIN, so a transaction never fails midway trying to upgrade a read
// lock (SQLITE_BUSY_SNAPSHOT); the wait happens under busy_timeout instead.
// Read-only transactions (sql.TxOptions{ReadOnly: true}) stay deferred.
func dsn(abs string) string {
	q := url.Values{}
	q.Set("_busy_timeout", fmt.Sprint(busyTimeout.Milliseconds()))
	q.Set("_journal_mode", "WAL")
	q.Set("_foreign_keys", "1")
	// FULL: a commit is on disk when it returns. The registry holds tokens
	// printed once and the command ledger; its write rate is low.
	q.Set("_synchronous", "FULL")
	q.Set("_txlock", "immediate")
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(abs), RawQuery: q.Encode()}
	return u.String()
}

// prepareFile creates the parent directory (0700) and the database file
// (0600) before SQLite does, so the file never exists with the umask's mode.
// An existing file (or -wal/-shm) with a looser mode is tightened.
func prepareFile(abs string, logger *slog.Logger) error {
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	for _, p := range []string{abs, abs + "-wal", abs + "-shm"} {
		st, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if st.Mode().Perm() != 0o600 {
			if err := os.Chmod(p, 0o600); err != nil {
				return err
			}
			logger.Warn("registry file had a loose mode; set to 0600", "path", p, "was", st.Mode().Perm().String())
		}
	}
	return nil
}

// Path is the absolute path of the database file.
func (r *Registry) Path() string { return r.path }

// Close closes the database. Not safe to call concurrently with other methods.
func (r *Registry) Close() error {
	if err := r.db.Close(); err != nil {
		return fmt.Errorf("close registry: %w", err)
	}
	return nil
}

// write runs fn in one write transaction (BEGIN IMMEDIATE). It waits for
// this process's other writers on a semaphore, which honours ctx, then for
// other processes under busy_timeout.
func (r *Registry) write(ctx context.Context, op string, fn func(tx *sql.Tx) error) error {
	start := time.Now()
	defer func() { r.m.writeSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds()) }()
	select {
	case r.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-r.wsem }()

	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// done records the outcome of a public call in the metrics: bad input
// separately from database errors. Not-found, exists and conflict are
// normal outcomes. Use as `defer r.done("op", &err)`.
func (r *Registry) done(op string, errp *error) {
	err := *errp
	switch {
	case err == nil, errors.Is(err, ErrNotFound), errors.Is(err, ErrExists), errors.Is(err, ErrConflict):
	case errors.Is(err, ErrInvalid):
		r.m.invalid.WithLabelValues(op).Inc()
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
	default:
		r.m.errors.WithLabelValues(op).Inc()
	}
}

// invalid wraps ErrInvalid with a message.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// clampLimit applies a default and a maximum to a page size.
func clampLimit(n, def, max int) int {
	if n <= 0 {
		return def
	}
	if n > max {
		return max
	}
	return n
}

// Times are stored as unix nanoseconds; NULL (nil) stands for the zero time.

func timeArg(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixNano()
}

func fromNanos(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}

// nowOr returns t, or the current time when t is zero.
func (r *Registry) nowOr(t time.Time) time.Time {
	if t.IsZero() {
		return r.now()
	}
	return t
}

type metrics struct {
	invalid      *prometheus.CounterVec
	errors       *prometheus.CounterVec
	auth         *prometheus.CounterVec
	writeSeconds *prometheus.HistogramVec
}

func newMetrics() *metrics {
	return &metrics{
		invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_registry_invalid_input_total",
			Help: "Registry calls refused for bad input (invalid ids, labels, documents), by operation.",
		}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_registry_errors_total",
			Help: "Registry calls that failed with a database error, by operation.",
		}, []string{"op"}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fieldhub_registry_auth_total",
			Help: "Credential checks, by kind (device, api) and result (ok, denied).",
		}, []string{"kind", "result"}),
		writeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fieldhub_registry_write_duration_seconds",
			Help:    "Duration of registry write transactions including the wait for the write lock, by operation.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"op"}),
	}
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.invalid, m.errors, m.auth, m.writeSeconds} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
