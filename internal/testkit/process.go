package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Process is a server a test runs as a child process (mosquitto, influxd,
// victoria-metrics, fieldhub), its output appended to a log file. It may be
// stopped and started again. Safe for concurrent use.
type Process struct {
	// Log is the file that collects the process's stdout and stderr.
	Log string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs cmd (not yet started) with its output appended to p.Log, and
// waits until ready reports true (polled every 20ms), the process exits, or
// timeout passes. The process is killed if the test binary dies.
func (p *Process) Start(cmd *exec.Cmd, timeout time.Duration, ready func() bool) error {
	logf, err := os.OpenFile(p.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	fmt.Fprintf(logf, "--- %s: starting at %s\n", cmd.Path, time.Now().Format(time.RFC3339Nano))
	cmd.Stdout, cmd.Stderr = logf, logf
	KillWithTest(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()

	deadline := time.Now().Add(timeout)
	for !ready() {
		select {
		case <-done:
			return fmt.Errorf("%s exited during startup (%s); log:\n%s", cmd.Path, cmd.ProcessState, p.Tail(4096))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s was not ready within %s; log:\n%s", cmd.Path, timeout, p.Tail(4096))
		}
	}
	return nil
}

// Tail is the last n bytes of the log.
func (p *Process) Tail(n int) string {
	b, _ := os.ReadFile(p.Log)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Running reports whether the process was started and has not exited.
func (p *Process) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// PID is the process id of the current run (0 before the first Start).
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Signal sends sig to the current run, if there is one.
func (p *Process) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	return p.cmd.Process.Signal(sig)
}

// Done is closed when the current run has exited (nil before Start).
func (p *Process) Done() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// Wait waits for the current run to exit and returns its exit code (-1 if
// it never started or was killed by a signal).
func (p *Process) Wait() int {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return -1
	}
	<-done
	return cmd.ProcessState.ExitCode()
}

// Stop sends SIGTERM, waits up to grace, then kills; it returns when the
// process has exited. A stopped (SIGSTOP) process is continued first so it
// can act on the SIGTERM.
func (p *Process) Stop(grace time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Process.Signal(syscall.SIGCONT)
	select {
	case <-done:
		return
	case <-time.After(grace):
	}
	_ = cmd.Process.Kill()
	<-done
}
