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
	DataDir string
	Args    []string // after "serve"
	Log     string   // path of its combined stdout and stderr

	t     testing.TB
	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
	addrs Addrs
}

// Start runs `fieldhub serve --data-dir dataDir` with extra args and waits
// until it is ready (its run file names it and /readyz answers 200). Unless
// args say otherwise it listens on free loopback ports, MQTT over TCP and
// HTTP only. The process is killed when the test ends; its log is printed
// if the test failed.
func Start(t testing.TB, dataDir string, args ...string) *Proc {
	t.Helper()
	p := &Proc{DataDir: dataDir, t: t, Log: filepath.Join(t.TempDir(), "fieldhub.log"),
		Args: append([]string{"--data-dir", dataDir, "--mqtt-addr", "127.0.0.1:0", "--mqtt-ws-addr", "", "--http-addr", "127.0.0.1:0"}, args...)}
	t.Cleanup(func() {
		p.Signal(syscall.SIGKILL)
		p.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(p.Log)
			if len(b) > 16<<10 {
				b = b[len(b)-16<<10:]
			}
			t.Logf("fieldhub log (%s):\n%s", p.Log, b)
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
	logf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	fmt.Fprintf(logf, "--- start %s\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(bin, append([]string{"serve"}, p.Args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	testkit.KillWithTest(cmd)
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()

	testkit.Eventually(p.t, startTimeout, func() bool {
		select {
		case <-done:
			b, _ := os.ReadFile(p.Log)
			p.t.Fatalf("fieldhub serve exited early:\n%s", b)
		default:
		}
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
	}, "fieldhub serve to be ready")
}

// Addrs are the bound addresses of the current run.
func (p *Proc) Addrs() Addrs {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addrs
}

// PID is the process id of the current run.
func (p *Proc) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// Signal sends sig to the current run, if it is running.
func (p *Proc) Signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(sig)
	}
}

// Done is closed when the current run has exited.
func (p *Proc) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Wait waits for the current run to exit and returns its exit code.
func (p *Proc) Wait() int {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return -1
	}
	<-done
	return cmd.ProcessState.ExitCode()
}

// Token is the admin API token the hub wrote on first start.
func (p *Proc) Token() string {
	p.t.Helper()
	b, err := os.ReadFile(filepath.Join(p.DataDir, "admin.token"))
	if err != nil {
		p.t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
