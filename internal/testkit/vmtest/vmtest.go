// Package vmtest runs a real single-node VictoriaMetrics (Debian's
// victoria-metrics package, /usr/bin/victoria-metrics) for tests: HTTP on a
// free loopback port and nothing else (no Graphite, InfluxDB UDP/TCP or
// OpenTSDB listeners, no scraping, no self-scraping: all off unless set),
// its data in t.TempDir(), stopped when the test ends.
package vmtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/internal/testkit"
)

// Server is a running victoria-metrics.
type Server struct {
	// URL is http://127.0.0.1:port: /api/v2/write and /write take InfluxDB
	// line protocol, /api/v1/export and /api/v1/query read.
	URL  string
	Addr string

	proc testkit.Process
}

// Start runs victoria-metrics. Extra flags are appended (e.g.
// -dedup.minScrapeInterval=1ms). The test is skipped (or failed with
// FIELDHUB_REQUIRE_ALL=1) when it is not installed.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	bin := testkit.Binary(t, "victoria-metrics")
	dir := t.TempDir()
	s := &Server{proc: testkit.Process{Log: filepath.Join(dir, "victoria-metrics.log")}}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("victoria-metrics log:\n%s", s.proc.Tail(16<<10))
		}
	})
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		s.Addr = testkit.FreeAddr(t)
		s.URL = "http://" + s.Addr
		args := append([]string{
			"-httpListenAddr=" + s.Addr,
			"-storageDataPath=" + filepath.Join(dir, "data"),
			"-retentionPeriod=1d",
			"-loggerLevel=WARN",
			"-search.latencyOffset=0s", // answer with what was just written
		}, extra...)
		if err = s.start(bin, args); err == nil {
			return s
		}
		s.stop()
	}
	t.Fatalf("vmtest: %v", err)
	return nil
}

func (s *Server) start(bin string, args []string) error {
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Dir(s.proc.Log)
	return s.proc.Start(cmd, 60*time.Second, func() bool {
		resp, err := http.Get(s.URL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// PID is the process id, for tests that inspect it.
func (s *Server) PID() int { return s.proc.PID() }

// Get GETs path (with its query) and returns the body, failing the test on
// a non-200 answer.
func (s *Server) Get(t testing.TB, path string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("vmtest: GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("vmtest: GET %s: %s: %s", path, resp.Status, b)
	}
	return b
}

// Listening lists the TCP ports the process listens on and the UDP ports
// it has bound, from /proc: "tcp:8428", "udp:8089".
func (s *Server) Listening(t testing.TB) []string {
	t.Helper()
	pid := s.PID()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("vmtest: %v", err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []string
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, proto))
		if err != nil {
			continue
		}
		for _, line := range bytes.Split(b, []byte("\n"))[1:] {
			f := strings.Fields(string(line))
			if len(f) < 10 || !inodes[f[9]] {
				continue
			}
			tcp := strings.HasPrefix(proto, "tcp")
			if tcp && f[3] != "0A" { // LISTEN
				continue
			}
			_, port, _ := strings.Cut(f[1], ":")
			p, _ := strconv.ParseUint(port, 16, 16)
			out = append(out, fmt.Sprintf("%s:%d", strings.TrimSuffix(proto, "6"), p))
		}
	}
	return out
}

func (s *Server) stop() { s.proc.Stop(15 * time.Second) }
