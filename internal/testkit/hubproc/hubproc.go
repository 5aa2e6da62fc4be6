// Package hubproc runs `fieldhub serve` as a child process for end-to-end
// tests: built once per test binary, started on free loopback ports, found
// through the run file it writes into its data_dir, and killed when the test
// ends.
package hubproc

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/internal/testkit"
)

// startTimeout is generous: tests share a 2-core machine.
const startTimeout = 60 * time.Second

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Build returns the fieldhub binary: the one named by FIELDHUB_BIN, or
// ./cmd/fieldhub built once per test binary (with -race when the test
// binary has it, so the child's races are caught too).
func Build(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("FIELDHUB_BIN"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fieldhub-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "fieldhub")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./cmd/fieldhub")...)
		cmd.Dir = testkit.RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/fieldhub: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Addrs are what the hub's run file (data_dir/hub.json) says.
type Addrs struct {
	MQTT string `json:"mqtt"`
	WS   string `json:"ws"`
	TLS  string `json:"tls"`
	HTTP string `json:"http"`
	PID  int    `json:"pid"`
}

// Proc is a running `fieldhub serve`.
type Proc struct {
	testkit.Process // Log, Signal, Done, Wait, PID of the current run

	DataDir string
	Args    []string // after "serve"

	t     testing.TB
	mu    sync.Mutex
	addrs Addrs
}

// Start runs `fieldhub serve --data-dir dataDir` with extra args and waits
// until it is ready (its run file names it and /readyz answers 200). Unless
// args say otherwise it listens on free loopback ports, MQTT over TCP and
// HTTP only. The process is killed when the test ends; its log is printed
// if the test failed.
func Start(t testing.TB, dataDir string, args ...string) *Proc {
	t.Helper()
	return StartArgs(t, dataDir, append([]string{"--data-dir", dataDir, "--mqtt-addr", "127.0.0.1:0", "--mqtt-ws-addr", "", "--http-addr", "127.0.0.1:0"}, args...))
}

// StartArgs is Start with exactly args after "serve" (a --config file, say),
// for a hub whose data_dir is dataDir.
func StartArgs(t testing.TB, dataDir string, args []string) *Proc {
	t.Helper()
	p := &Proc{DataDir: dataDir, t: t, Process: testkit.Process{Log: filepath.Join(t.TempDir(), "fieldhub.log")}, Args: args}
	t.Cleanup(func() {
		_ = p.Signal(syscall.SIGKILL)
		p.Wait()
		if t.Failed() {
			t.Logf("fieldhub log (%s):\n%s", p.Log, p.Tail(16<<10))
		}
	})
	p.Restart()
	return p
}

// Restart starts the process again (after it stopped or was killed) with
// the same arguments and data dir, and waits until it is ready.
func (p *Proc) Restart() {
	p.t.Helper()
	bin := Build(p.t)
	_ = os.Remove(filepath.Join(p.DataDir, "hub.json"))
	cmd := exec.Command(bin, append([]string{"serve"}, p.Args...)...)
	cmd.Env = childEnv()
	err := p.Start(cmd, startTimeout, func() bool {
		var a Addrs
		b, err := os.ReadFile(filepath.Join(p.DataDir, "hub.json"))
		if err != nil || json.Unmarshal(b, &a) != nil || a.PID != cmd.Process.Pid {
			return false
		}
		resp, err := http.Get("http://" + a.HTTP + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		p.mu.Lock()
		p.addrs = a
		p.mu.Unlock()
		return resp.StatusCode == http.StatusOK
	})
	if err != nil {
		p.t.Fatalf("fieldhub serve: %v", err)
	}
}

// Addrs are the bound addresses of the current run.
func (p *Proc) Addrs() Addrs {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addrs
}

// childEnv is the test's environment without FIELDHUB_* variables, so the
// child is configured by its arguments alone.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FIELDHUB_") {
			env = append(env, kv)
		}
	}
	return env
}
