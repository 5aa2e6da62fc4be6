// Package testkit holds helpers shared by fieldhub's integration tests:
// finding the real third-party tools the tests drive (mosquitto, influxd,
// chromium) and free loopback ports.
//
// A test that needs a missing tool is skipped with a message naming the tool,
// unless FIELDHUB_REQUIRE_ALL=1 is set (CI sets it), in which case it fails.
package testkit

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// RequireAll reports whether missing tools fail tests instead of skipping them.
func RequireAll() bool { return os.Getenv("FIELDHUB_REQUIRE_ALL") == "1" }

// Missing skips the test, or fails it when FIELDHUB_REQUIRE_ALL=1.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if RequireAll() {
		t.Fatalf("FIELDHUB_REQUIRE_ALL=1 but "+format, args...)
	}
	t.Skipf("skipped: "+format, args...)
}

// Binary returns the path of a tool on PATH, in the repo's .tools/bin
// folder (where the Makefile installs influxd) or in /usr/sbin (Debian's
// mosquitto, which is not on a normal user's PATH). It skips or fails the
// test when the tool is not found.
func Binary(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	var dirs []string
	if root := RepoRoot(); root != "" {
		dirs = append(dirs, filepath.Join(root, ".tools", "bin"))
	}
	for _, dir := range append(dirs, "/usr/sbin") {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	Missing(t, "%s not found on PATH, in .tools/bin or /usr/sbin (run `make tools` or see .ci/run)", name)
	return ""
}

// RepoRoot is the folder holding go.mod, found from this source file.
func RepoRoot() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return ""
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
// Prefer listening on 127.0.0.1:0 directly where the code allows it; this is
// for third-party servers that must be told their port up front.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// Eventually polls cond every 20ms until it holds or timeout passes, then
// fails the test with what it was waiting for. The timeout is a generous
// upper bound for a shared machine, not a performance claim.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
