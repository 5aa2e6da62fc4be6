package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// openAt opens a registry at path and closes it when the test ends.
func openAt(t testing.TB, path string, opts ...Option) *Registry {
	t.Helper()
	r, err := Open(context.Background(), path, testLogger(t), opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

// openTest opens a fresh registry in a temp dir, in a sub-directory that
// does not exist yet (Open creates it).
func openTest(t testing.TB) *Registry {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "data", "registry.db"))
}

func mustCreate(t testing.TB, r *Registry, id string, labels map[string]string) string {
	t.Helper()
	_, tok, err := r.CreateDevice(context.Background(), DeviceSpec{ID: id, Type: "sensor", Labels: labels})
	if err != nil {
		t.Fatalf("CreateDevice(%q): %v", id, err)
	}
	return tok
}

func TestOpenFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, "registry.db")
	r := openAt(t, path)
	// A write makes sure -wal and -shm exist.
	mustCreate(t, r, "dev-1", nil)

	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatalf("stat %s: %v", p, err)
		}
		if got := st.Mode().Perm(); got != 0o600 {
			t.Errorf("%s has mode %v, want 0600", filepath.Base(p), got)
		}
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o700 {
		t.Errorf("data dir has mode %v, want 0700", got)
	}

	var mode string
	if err := r.db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
	var fk int
	if err := r.db.QueryRow("PRAGMA foreign_keys").Scan(&fk); err != nil || fk != 1 {
		t.Errorf("foreign_keys = %d, %v; want 1", fk, err)
	}
}

func TestOpenTightensLooseMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil { // umask may have masked it
		t.Fatal(err)
	}
	openAt(t, path)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Mode().Perm(); got != 0o600 {
		t.Errorf("mode %v after Open, want 0600", got)
	}
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")

	r, err := Open(ctx, path, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	v, err := r.SchemaVersion(ctx)
	if err != nil || v != len(migrations) {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, len(migrations))
	}
	mustCreate(t, r, "keep-me", map[string]string{"site": "a"})
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopening is a no-op: same version, one row per step, data intact.
	r = openAt(t, path)
	var rows int
	if err := r.db.QueryRow("SELECT count(*) FROM schema_version").Scan(&rows); err != nil || rows != len(migrations) {
		t.Fatalf("schema_version rows = %d, %v; want %d", rows, err, len(migrations))
	}
	if _, err := r.Device(ctx, "keep-me"); err != nil {
		t.Fatalf("device lost on reopen: %v", err)
	}
	from, to, err := r.migrate(ctx, migrations)
	if err != nil || from != len(migrations) || to != len(migrations) {
		t.Fatalf("migrate again = %d->%d, %v; want no-op at %d", from, to, err, len(migrations))
	}

	tests := []struct {
		name     string
		steps    []string
		wantFrom int
		wantTo   int
		wantErr  string
	}{
		{
			name:     "new step applied once",
			steps:    append(append([]string{}, migrations...), "CREATE TABLE extra (x INTEGER)"),
			wantFrom: len(migrations), wantTo: len(migrations) + 1,
		},
		{
			name:     "same steps again: no-op",
			steps:    append(append([]string{}, migrations...), "CREATE TABLE extra (x INTEGER)"),
			wantFrom: len(migrations) + 1, wantTo: len(migrations) + 1,
		},
		{
			name:     "failing step rolls back whole migration",
			steps:    append(append([]string{}, migrations...), "CREATE TABLE extra (x INTEGER)", "CREATE TABLE extra2 (y INTEGER)", "THIS IS NOT SQL"),
			wantFrom: len(migrations) + 1, wantErr: "migration",
		},
		{
			name:    "database newer than binary",
			steps:   migrations,
			wantErr: "newer than this fieldhub supports",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from, to, err := r.migrate(ctx, tt.steps)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("migrate err = %v, want %q", err, tt.wantErr)
				}
				v, _ := r.SchemaVersion(ctx)
				if v != len(migrations)+1 {
					t.Errorf("version after failed migration = %d, want %d", v, len(migrations)+1)
				}
				var n int
				r.db.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = 'extra2'").Scan(&n)
				if n != 0 {
					t.Error("table of a failed migration run exists: not transactional")
				}
				return
			}
			if err != nil || from != tt.wantFrom || to != tt.wantTo {
				t.Fatalf("migrate = %d->%d, %v; want %d->%d", from, to, err, tt.wantFrom, tt.wantTo)
			}
		})
	}
}

// TestTwoRegistriesSameFile simulates the hub and the CLI opening the same
// file: writes of one are visible to the other, and concurrent writers in
// both never fail with SQLITE_BUSY.
func TestTwoRegistriesSameFile(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	var (
		hub, cli *Registry
		wg       sync.WaitGroup
		errs     = make(chan error, 2)
	)
	// Both open the fresh file at once: the migration must run once.
	wg.Add(2)
	go func() {
		defer wg.Done()
		r, err := Open(ctx, path, testLogger(t))
		hub = r
		errs <- err
	}()
	go func() {
		defer wg.Done()
		r, err := Open(ctx, path, testLogger(t))
		cli = r
		errs <- err
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent Open: %v", err)
		}
	}
	t.Cleanup(func() { hub.Close(); cli.Close() })

	tok := mustCreate(t, cli, "from-cli", nil)
	ok, err := hub.AuthenticateDevice(ctx, "from-cli", tok)
	if err != nil || !ok {
		t.Fatalf("hub cannot authenticate device the CLI added: %v, %v", ok, err)
	}
	if err := hub.SetPresence(ctx, "from-cli", true, time.Now()); err != nil {
		t.Fatal(err)
	}
	if d, err := cli.Device(ctx, "from-cli"); err != nil || !d.Online {
		t.Fatalf("CLI does not see presence the hub wrote: %+v, %v", d, err)
	}

	// Concurrent writers in both "processes".
	const perWriter = 40
	regs := []*Registry{hub, cli}
	werrs := make(chan error, 4*perWriter)
	var wg2 sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg2.Add(1)
		go func(w int) {
			defer wg2.Done()
			r := regs[w%2]
			for i := 0; i < perWriter; i++ {
				id := fmt.Sprintf("w%d-dev-%03d", w, i)
				if _, _, err := r.CreateDevice(ctx, DeviceSpec{ID: id, Labels: map[string]string{"writer": fmt.Sprint(w)}}); err != nil {
					werrs <- err
					return
				}
				if err := r.TouchLastSeen(ctx, map[string]time.Time{id: time.Now(), "from-cli": time.Now()}); err != nil {
					werrs <- err
					return
				}
				if err := r.AddEvents(ctx, nil); err != nil {
					werrs <- err
					return
				}
			}
		}(w)
	}
	// A reader in parallel (WAL: readers never wait for the writer).
	wg2.Add(1)
	go func() {
		defer wg2.Done()
		for i := 0; i < 50; i++ {
			if _, err := hub.Devices(ctx, DeviceFilter{Limit: 1000}); err != nil {
				werrs <- err
				return
			}
		}
	}()
	wg2.Wait()
	close(werrs)
	for err := range werrs {
		t.Fatalf("concurrent write failed: %v", err)
	}
	for _, r := range regs {
		total, online, err := r.CountDevices(ctx)
		if err != nil || total != 1+4*perWriter || online != 1 {
			t.Errorf("CountDevices = %d, %d, %v; want %d, 1", total, online, err, 1+4*perWriter)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a database ", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
	}{
		{"empty path", ""},
		{"parent is a file", filepath.Join(notDir, "registry.db")},
		{"not a database", garbage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Open(ctx, tt.path, nil)
			if err == nil {
				r.Close()
				t.Fatal("Open succeeded, want error")
			}
			if !strings.HasPrefix(err.Error(), "open registry") {
				t.Errorf("error %q does not say what failed", err)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewPedanticRegistry()
	r := openAt(t, filepath.Join(t.TempDir(), "registry.db"), WithRegisterer(reg))

	if _, _, err := r.CreateDevice(ctx, DeviceSpec{ID: "bad/id"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("CreateDevice(bad/id) = %v, want ErrInvalid", err)
	}
	tok := mustCreate(t, r, "good", nil)
	r.AuthenticateDevice(ctx, "good", tok)
	r.AuthenticateDevice(ctx, "good", "nope")
	if _, err := r.Device(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Device(missing) = %v", err)
	}

	if got := testutil.ToFloat64(r.m.invalid.WithLabelValues("create_device")); got != 1 {
		t.Errorf("invalid_input_total{op=create_device} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(r.m.auth.WithLabelValues("device", "ok")); got != 1 {
		t.Errorf("auth ok = %v, want 1", got)
	}
	if got := testutil.ToFloat64(r.m.auth.WithLabelValues("device", "denied")); got != 1 {
		t.Errorf("auth denied = %v, want 1", got)
	}
	if got := testutil.ToFloat64(r.m.errors.WithLabelValues("device")); got != 0 {
		t.Errorf("not-found counted as error: %v", got)
	}
	n, err := testutil.GatherAndCount(reg, "fieldhub_registry_invalid_input_total", "fieldhub_registry_auth_total", "fieldhub_registry_write_duration_seconds")
	if err != nil || n == 0 {
		t.Errorf("metrics not gathered from the injected registerer: %d, %v", n, err)
	}
}

// TestTokensStoredHashed reads the raw database bytes and makes sure no
// token, nor its random body, is in them.
func TestTokensStoredHashed(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	r, err := Open(ctx, path, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	_, devTok, err := r.CreateDevice(ctx, DeviceSpec{ID: "secret-dev"})
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := r.RotateDeviceToken(ctx, "secret-dev")
	if err != nil {
		t.Fatal(err)
	}
	_, apiTok, err := r.CreateAPIToken(ctx, "ci")
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{devTok, rotated, apiTok}
	for _, s := range secrets {
		if !strings.HasPrefix(s, deviceTokenPrefix) && !strings.HasPrefix(s, apiTokenPrefix) {
			t.Errorf("token %q lacks its prefix", s)
		}
		if len(s) < 4+43 {
			t.Errorf("token %q is shorter than 32 bytes of base64", s)
		}
	}

	check := func(stage string) {
		t.Helper()
		var files [][]byte
		for _, p := range []string{path, path + "-wal"} {
			b, err := os.ReadFile(p)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, b)
		}
		if len(files) == 0 {
			t.Fatalf("%s: no database files", stage)
		}
		for _, b := range files {
			for _, s := range secrets {
				body := s[4:]
				if strings.Contains(string(b), s) || strings.Contains(string(b), body) {
					t.Errorf("%s: token %q found in the database files", stage, s)
				}
			}
		}
	}
	check("open (WAL holds the writes)")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	check("closed (checkpointed)")
}

// TestWriteHonoursContext: a writer waiting for this process's write lock
// gives up when its context ends.
func TestWriteHonoursContext(t *testing.T) {
	r := openTest(t)
	release := make(chan struct{})
	holding := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- r.write(context.Background(), "test_hold", func(tx *sql.Tx) error {
			close(holding)
			<-release
			return nil
		})
	}()
	<-holding
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, _, err := r.CreateDevice(ctx, DeviceSpec{ID: "waiting"})
	close(release)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("CreateDevice while lock held = %v, want deadline exceeded", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestOpenOddPaths: the path goes into a SQLite URI; characters with a
// meaning there must be escaped, not interpreted.
func TestOpenOddPaths(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"with space", "q?mode=ro", "hash#frag", "pct%20x", "amp&_txlock=bogus"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), name, "registry.db")
			r := openAt(t, path)
			mustCreate(t, r, "d", nil)
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("database not at %q: %v", path, err)
			}
			if d, err := r.Device(ctx, "d"); err != nil || d.ID != "d" {
				t.Fatalf("Device = %+v, %v", d, err)
			}
		})
	}
}
