package influxdtest

import (
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fluxCSV runs a Flux query through the v2-compatible API and returns the
// annotated CSV.
func fluxCSV(t *testing.T, s *Server, flux string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/api/v2/query", strings.NewReader(flux))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/vnd.flux")
	req.Header.Set("Authorization", "Token "+s.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("flux query: %s: %s", resp.Status, b)
	}
	return string(b)
}

// TestV2API checks the claims of the package doc against the real binary:
// v2 write with bucket=db/rp and precision=ms, Flux queries, errors.
func TestV2API(t *testing.T) {
	s := Start(t)

	if code, body := s.WriteLP(t, "m,device=d1 v=1.5 1700000000123\nm,device=d1 v=2.5 1700000001123"); code != http.StatusNoContent {
		t.Fatalf("write: %d %s", code, body)
	}
	csv := fluxCSV(t, s, `from(bucket: "`+s.Bucket+`") |> range(start: 0) |> filter(fn: (r) => r._measurement == "m") |> last()`)
	if !strings.Contains(csv, "2023-11-14T22:13:21.123Z,2.5,v,m,d1") {
		t.Fatalf("flux result lacks the last point (ms precision):\n%s", csv)
	}

	// A missing database is a 404, a field type conflict a 400.
	u := s.URL + "/api/v2/write?bucket=nope/autogen&precision=ms"
	resp, err := http.Post(u, "text/plain", strings.NewReader("m v=1 1"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("write to missing database: %s, want 404", resp.Status)
	}
	if code, body := s.WriteLP(t, "m,device=d1 v=3i 1700000002000"); code != http.StatusBadRequest || !strings.Contains(body, "field type conflict") {
		t.Errorf("integer into float field: %d %s, want 400 field type conflict", code, body)
	}
}

// TestStopRestart proves Stop makes the server unreachable and Restart brings
// it back on the same URL with its data.
func TestStopRestart(t *testing.T) {
	s := Start(t)
	if code, body := s.WriteLP(t, "m,device=d1 v=7 1700000000000"); code != http.StatusNoContent {
		t.Fatalf("write: %d %s", code, body)
	}
	url := s.URL
	s.Stop(t)
	if err := ping(url); err == nil {
		t.Fatal("ping succeeded after Stop")
	}
	s.Stop(t) // idempotent
	s.Restart(t)
	if s.URL != url {
		t.Fatalf("URL changed across restart: %s -> %s", url, s.URL)
	}
	csv := fluxCSV(t, s, `from(bucket: "`+s.Bucket+`") |> range(start: 0) |> filter(fn: (r) => r._measurement == "m")`)
	if !strings.Contains(csv, ",7,v,m,d1") {
		t.Fatalf("data lost across restart:\n%s", csv)
	}
}

// TestListensOnLoopbackOnly proves influxd opens exactly two TCP listeners
// (HTTP and RPC), both on 127.0.0.1, and no UDP sockets: nothing on :8086,
// :8088 or the wildcard address. Linux only (reads /proc).
func TestListensOnLoopbackOnly(t *testing.T) {
	s := Start(t)
	pid := s.proc.PID()
	inodes, err := socketInodes(pid)
	if err != nil {
		t.Fatalf("cannot read /proc: %v", err)
	}
	var listening []string
	for _, table := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "net", table))
		if err != nil {
			t.Fatalf("cannot read /proc: %v", err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || !inodes[f[9]] {
				continue
			}
			udp := strings.HasPrefix(table, "udp")
			if !udp && f[3] != "0A" { // TCP_LISTEN
				continue
			}
			listening = append(listening, table+" "+decodeAddr(f[1]))
		}
	}
	if len(listening) != 2 {
		t.Fatalf("influxd sockets: %v, want exactly 2 TCP listeners", listening)
	}
	for _, l := range listening {
		if !strings.HasPrefix(l, "tcp 127.0.0.1:") {
			t.Errorf("influxd listens on %s, want 127.0.0.1 only", l)
		}
	}
	if _, port, _ := net.SplitHostPort(strings.TrimPrefix(s.URL, "http://")); !strings.Contains(strings.Join(listening, " "), ":"+port) {
		t.Errorf("HTTP port %s not among %v", port, listening)
	}
}

// socketInodes returns the inodes of the sockets a process holds open.
func socketInodes(pid int) (map[string]bool, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	m := map[string]bool{}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err == nil && strings.HasPrefix(target, "socket:[") {
			m[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}
	return m, nil
}

// decodeAddr turns /proc/net/tcp's "0100007F:1F90" into "127.0.0.1:8080"
// (IPv6 addresses are left in hex: any of them is a failure here anyway).
func decodeAddr(s string) string {
	host, port, _ := strings.Cut(s, ":")
	p, _ := strconv.ParseUint(port, 16, 16)
	if b, err := hex.DecodeString(host); err == nil && len(b) == 4 {
		return net.IPv4(b[3], b[2], b[1], b[0]).String() + ":" + strconv.FormatUint(p, 10)
	}
	return host + ":" + strconv.FormatUint(p, 10)
}

// TestPauseResume proves a paused server accepts connections but does not
// answer, and answers again after Resume.
func TestPauseResume(t *testing.T) {
	s := Start(t)
	s.Pause(t)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/ping", nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("paused server answered %s", resp.Status)
	}
	s.Resume(t)
	if err := ping(s.URL); err != nil {
		t.Fatalf("after Resume: %v", err)
	}
	s.Pause(t) // the cleanup must stop a paused server
}
