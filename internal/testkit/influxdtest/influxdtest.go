// Package influxdtest runs a real influxd (InfluxDB 1.8, with its
// v2-compatible API and Flux enabled) for tests: on free loopback ports, with
// its data in t.TempDir(), without phoning home, and stopped when the test
// ends. Stop and Restart let outage tests take it away and bring it back with
// its data.
//
// The v2-compatible API of influxd 1.8: write with
// POST /api/v2/write?bucket=db/rp&precision=ms, query Flux with
// POST /api/v2/query; the token is "username:password" or any string while
// auth is disabled (as here); the org is ignored.
package influxdtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/internal/testkit"
)

// Database is the database Start creates; Bucket names its default
// retention policy the way the v2 API wants it.
const (
	Database = "fieldhub"
	Bucket   = Database + "/autogen"
)

// Generous waits: the machine running the tests may be busy.
const (
	startTimeout = 60 * time.Second
	stopTimeout  = 15 * time.Second
)

// Server is a running influxd.
type Server struct {
	// URL is the HTTP API's base URL, http://127.0.0.1:port.
	URL string
	// Bucket is "fieldhub/autogen", Org "-" (ignored by 1.8) and Token a
	// placeholder accepted while auth is disabled.
	Bucket string
	Org    string
	Token  string

	bin     string
	dir     string
	cfgPath string
	proc    testkit.Process
}

// Start runs influxd and creates the database. The test is skipped (or
// failed with FIELDHUB_REQUIRE_ALL=1) when influxd is not installed.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := testkit.Binary(t, "influxd")
	dir := t.TempDir()
	s := &Server{
		Bucket:  Bucket,
		Org:     "-",
		Token:   "fieldhub:fieldhub",
		bin:     bin,
		dir:     dir,
		cfgPath: filepath.Join(dir, "influxd.conf"),
		proc:    testkit.Process{Log: filepath.Join(dir, "influxd.log")},
	}
	// Registered before the process starts so a failed start is logged too;
	// it runs before t.TempDir's removal (cleanups run last-in first-out).
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			s.dumpLog(t)
		}
	})

	// The ports are picked free but influxd binds them later, so another
	// process may take one in between: try again with new ports.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		httpAddr, rpcAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
		if err = os.WriteFile(s.cfgPath, []byte(config(dir, httpAddr, rpcAddr)), 0o600); err != nil {
			t.Fatalf("influxdtest: write config: %v", err)
		}
		s.URL = "http://" + httpAddr
		if err = s.start(); err == nil {
			break
		}
		s.stop()
	}
	if err != nil {
		t.Fatalf("influxdtest: %v", err)
	}
	if err := s.createDatabase(); err != nil {
		t.Fatalf("influxdtest: %v", err)
	}
	return s
}

// config is influxd's configuration: everything inside dir, HTTP and the
// RPC service (backup/restore, default :8088) on the given loopback
// addresses, and every other listener, the self-monitoring store, continuous
// queries and usage reporting off.
func config(dir, httpAddr, rpcAddr string) string {
	q := func(s string) string { return fmt.Sprintf("%q", s) }
	return `reporting-disabled = true
bind-address = ` + q(rpcAddr) + `

[meta]
  dir = ` + q(filepath.Join(dir, "meta")) + `
  logging-enabled = false

[data]
  dir = ` + q(filepath.Join(dir, "data")) + `
  wal-dir = ` + q(filepath.Join(dir, "wal")) + `
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = ` + q(httpAddr) + `
  auth-enabled = false
  log-enabled = false
  flux-enabled = true
  pprof-enabled = false
  unix-socket-enabled = false

[logging]
  level = "info"
  suppress-logo = true
`
	// No [[graphite]], [[collectd]], [[opentsdb]] or [[udp]] sections: they
	// are disabled unless configured.
}

// start runs the process and waits for /ping.
func (s *Server) start() error {
	cmd := exec.Command(s.bin, "run", "-config", s.cfgPath)
	cmd.Dir = s.dir
	cmd.Env = cleanEnv(s.dir)
	return s.proc.Start(cmd, startTimeout, func() bool { return ping(s.URL) == nil })
}

// cleanEnv drops INFLUXDB_* variables, which override the config file, and
// points HOME at the test's folder so nothing lands in the real one.
func cleanEnv(home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "INFLUXDB_") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home)
}

func ping(base string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/ping", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("ping: %s", resp.Status)
	}
	return nil
}

func (s *Server) createDatabase() error {
	return s.query("CREATE DATABASE " + Database)
}

// query runs an InfluxQL statement through the 1.x /query endpoint.
func (s *Server) query(q string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/query",
		strings.NewReader(url.Values{"q": {q}}.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", q, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	// InfluxQL reports statement errors in a 200 body: {"results":[{"error":...}]}.
	if resp.StatusCode != http.StatusOK || bytes.Contains(body, []byte(`"error"`)) {
		return fmt.Errorf("%s: %s: %s", q, resp.Status, body)
	}
	return nil
}

// Query runs an InfluxQL statement (for tests that set up state by hand).
func (s *Server) Query(t testing.TB, q string) {
	t.Helper()
	if err := s.query(q); err != nil {
		t.Fatalf("influxdtest: %v", err)
	}
}

// WriteLP writes line protocol with millisecond timestamps through the v2
// write API and returns the HTTP status and body, for tests that need to
// write what the store under test would not (e.g. an integer field).
func (s *Server) WriteLP(t testing.TB, lines string) (status int, body string) {
	t.Helper()
	u := s.URL + "/api/v2/write?" + url.Values{"bucket": {s.Bucket}, "precision": {"ms"}}.Encode()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(lines))
	if err != nil {
		t.Fatalf("influxdtest: %v", err)
	}
	req.Header.Set("Authorization", "Token "+s.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("influxdtest: write: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Stop stops influxd (for outage tests: connections are refused) and keeps
// its data and port for Restart. Stopping a stopped server does nothing.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.stop()
}

// Restart starts influxd again on the same port and data, and waits until it
// answers /ping.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.proc.Running() {
		t.Fatalf("influxdtest: Restart while running; Stop first")
	}
	if err := s.start(); err != nil {
		t.Fatalf("influxdtest: restart: %v", err)
	}
}

// Pause freezes influxd (SIGSTOP): its ports still accept connections but
// nothing answers, like a hung server. Resume undoes it; Stop and the test's
// cleanup resume a paused server first.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGSTOP)
	// Signals are delivered asynchronously: wait until the kernel reports
	// the process stopped, so the caller's next request meets a hung server.
	pid := s.proc.PID()
	deadline := time.Now().Add(stopTimeout)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatalf("influxdtest: pause: %v", err)
		}
		// The state is the field after the parenthesised command name.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && (b[i+2] == 'T' || b[i+2] == 't') {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("influxdtest: influxd did not stop within %s of SIGSTOP", stopTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Resume lets a paused influxd run again (SIGCONT).
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	s.signal(t, syscall.SIGCONT)
}

func (s *Server) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if !s.proc.Running() {
		t.Fatalf("influxdtest: %v: influxd is not running", sig)
	}
	if err := s.proc.Signal(sig); err != nil {
		t.Fatalf("influxdtest: %v: %v", sig, err)
	}
}

// stop sends SIGTERM (continuing a paused server first), waits, then kills.
func (s *Server) stop() { s.proc.Stop(stopTimeout) }

func (s *Server) dumpLog(t testing.TB) {
	t.Logf("influxd log (%s, last 16 KiB):\n%s", s.proc.Log, s.proc.Tail(16<<10))
}
