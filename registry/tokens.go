package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
	"unicode"
	"unicode/utf8"
)

// Token prefixes make a leaked secret recognizable (secret scanners, logs)
// and tell device tokens from operator tokens at a glance.
const (
	deviceTokenPrefix = "fhd_"
	apiTokenPrefix    = "fha_"
	// tokenBytes of crypto/rand: 256 bits, twice the 128 the design asks for.
	tokenBytes = 32

	// lastUsedGranularity limits how often authenticating an API token
	// writes its last_used time: not on every HTTP request.
	lastUsedGranularity = time.Minute
	maxTokenNameLen     = 64
)

// newToken returns a fresh secret and its SHA-256. A plain hash is enough:
// the secret has 256 random bits, so there is nothing to brute-force and a
// slow password KDF (bcrypt, argon2) would only cost CPU on every MQTT
// CONNECT and API request. What the hash buys is that a copy of the
// database file does not hold usable credentials.
func newToken(prefix string) (token string, hash [sha256.Size]byte, err error) {
	var b [tokenBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", hash, fmt.Errorf("generate token: %w", err)
	}
	token = prefix + base64.RawURLEncoding.EncodeToString(b[:])
	return token, sha256.Sum256([]byte(token)), nil
}

// randomID returns n random bytes in hex, for non-secret identifiers.
func randomID(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate id: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// APIToken is an operator's bearer token for the HTTP API and the CLI.
type APIToken struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	LastUsed  time.Time `json:"last_used,omitzero"`
}

func validateTokenName(name string) error {
	if name == "" {
		return invalid("token name is empty")
	}
	if len(name) > maxTokenNameLen {
		return invalid("token name is longer than %d bytes", maxTokenNameLen)
	}
	if !utf8.ValidString(name) {
		return invalid("token name is not valid UTF-8")
	}
	for _, c := range name {
		if unicode.IsControl(c) {
			return invalid("token name has control character %q", c)
		}
	}
	return nil
}

// CreateAPIToken creates an operator token and returns it with its secret,
// which is shown only here.
func (r *Registry) CreateAPIToken(ctx context.Context, name string) (tok APIToken, secret string, err error) {
	defer r.done("create_api_token", &err)
	err = r.write(ctx, "create_api_token", func(tx *sql.Tx) error {
		var err error
		tok, secret, err = r.insertAPIToken(ctx, tx, name)
		return err
	})
	if err != nil {
		return APIToken{}, "", fmt.Errorf("create api token: %w", err)
	}
	return tok, secret, nil
}

func (r *Registry) insertAPIToken(ctx context.Context, tx *sql.Tx, name string) (APIToken, string, error) {
	if err := validateTokenName(name); err != nil {
		return APIToken{}, "", err
	}
	secret, hash, err := newToken(apiTokenPrefix)
	if err != nil {
		return APIToken{}, "", err
	}
	id, err := randomID(8)
	if err != nil {
		return APIToken{}, "", err
	}
	now := r.now().UnixNano()
	if _, err := tx.ExecContext(ctx, "INSERT INTO api_tokens (id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
		id, name, hash[:], now); err != nil {
		return APIToken{}, "", err
	}
	return APIToken{ID: id, Name: name, CreatedAt: time.Unix(0, now).UTC()}, secret, nil
}

// AuthenticateAPIToken finds the operator token for a bearer secret. A
// wrong secret yields false with a nil error.
//
// The lookup is by the secret's SHA-256 (indexed). Index timing can only
// tell an attacker about hash prefixes of guesses, which says nothing about
// a 256-bit secret; the hashes are then compared in constant time anyway,
// and a miss compares against a dummy.
func (r *Registry) AuthenticateAPIToken(ctx context.Context, secret string) (tok APIToken, ok bool, err error) {
	defer r.done("authenticate_api_token", &err)
	sum := sha256.Sum256([]byte(secret))
	var (
		stored   []byte
		created  int64
		lastUsed sql.NullInt64
	)
	err = r.db.QueryRowContext(ctx, "SELECT id, name, token_hash, created_at, last_used FROM api_tokens WHERE token_hash = ?", sum[:]).
		Scan(&tok.ID, &tok.Name, &stored, &created, &lastUsed)
	found := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return APIToken{}, false, fmt.Errorf("authenticate api token: %w", err)
	}
	if !found {
		stored = r.dummyHash[:]
	}
	ok = subtle.ConstantTimeCompare(sum[:], stored) == 1 && found && secret != ""
	r.m.auth.WithLabelValues("api", result(ok)).Inc()
	if !ok {
		return APIToken{}, false, nil
	}
	tok.CreatedAt = time.Unix(0, created).UTC()
	tok.LastUsed = fromNanos(lastUsed)

	now := r.now()
	if now.Sub(tok.LastUsed) >= lastUsedGranularity {
		werr := r.write(ctx, "touch_api_token", func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, "UPDATE api_tokens SET last_used = max(coalesce(last_used, 0), ?) WHERE id = ?", now.UnixNano(), tok.ID)
			return err
		})
		if werr != nil {
			// The token is valid; failing the request because the
			// bookkeeping write failed would be worse.
			r.logger.Warn("record api token use", "token_id", tok.ID, "err", werr)
		} else {
			tok.LastUsed = time.Unix(0, now.UnixNano()).UTC()
		}
	}
	return tok, true, nil
}

// APITokens lists operator tokens (never their secrets), oldest first.
func (r *Registry) APITokens(ctx context.Context) (toks []APIToken, err error) {
	defer r.done("api_tokens", &err)
	rows, err := r.db.QueryContext(ctx, "SELECT id, name, created_at, last_used FROM api_tokens ORDER BY created_at, id")
	if err != nil {
		return nil, fmt.Errorf("list api tokens: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			t        APIToken
			created  int64
			lastUsed sql.NullInt64
		)
		if err := rows.Scan(&t.ID, &t.Name, &created, &lastUsed); err != nil {
			return nil, fmt.Errorf("list api tokens: %w", err)
		}
		t.CreatedAt = time.Unix(0, created).UTC()
		t.LastUsed = fromNanos(lastUsed)
		toks = append(toks, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list api tokens: %w", err)
	}
	return toks, nil
}

// DeleteAPIToken revokes an operator token.
func (r *Registry) DeleteAPIToken(ctx context.Context, id string) (err error) {
	defer r.done("delete_api_token", &err)
	err = r.write(ctx, "delete_api_token", func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, "DELETE FROM api_tokens WHERE id = ?", id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("api token %q: %w", id, ErrNotFound)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete api token: %w", err)
	}
	return nil
}

// EnsureAdminToken bootstraps operator access: when the registry has no API
// token at all, it creates one named "admin" and writes its secret to path
// (mode 0600, parent directory created 0700), atomically. Otherwise it does
// nothing. The file is written while the insert's transaction is still
// open, so either both happen or neither: a token nobody can read is never
// left behind, and two processes starting at once create one token.
func (r *Registry) EnsureAdminToken(ctx context.Context, path string) (created bool, err error) {
	defer r.done("ensure_admin_token", &err)
	err = r.write(ctx, "ensure_admin_token", func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM api_tokens").Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		_, secret, err := r.insertAPIToken(ctx, tx, "admin")
		if err != nil {
			return err
		}
		if err := writeFileAtomic(path, []byte(secret+"\n"), 0o600); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		created = true
		return nil
	})
	if err != nil {
		if created {
			// The commit failed after the file was written: remove the
			// file so it does not hold a token the registry lacks.
			_ = os.Remove(path)
		}
		return false, fmt.Errorf("ensure admin token: %w", err)
	}
	if created {
		r.logger.Info("created admin API token", "path", path)
	}
	return created, nil
}

// writeFileAtomic writes data to a temporary file in path's directory,
// syncs it and renames it over path, so readers see the old file or the
// whole new one, never a partial one.
func writeFileAtomic(path string, data []byte, mode os.FileMode) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	// Sync the directory so the rename survives a power cut.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
