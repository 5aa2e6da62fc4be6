// Package mosquittotest runs a real Mosquitto broker (Debian's
// /usr/sbin/mosquitto) for tests: on a free loopback port, with its files in
// t.TempDir(), stopped when the test ends.
package mosquittotest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/internal/testkit"
)

// Options shape the broker's configuration.
type Options struct {
	// Users maps user names to passwords; when set, anonymous access is off
	// and a password file is written with mosquitto_passwd.
	Users map[string]string
	// ACL is the text of an acl_file (Mosquitto's "user"/"topic"/"pattern"
	// lines); "" means no ACL (everything allowed).
	ACL string
	// Extra lines appended to mosquitto.conf.
	Extra string
}

// Server is a running mosquitto.
type Server struct {
	// Addr is host:port; URL is tcp://Addr.
	Addr, URL string

	bin, conf, log string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs mosquitto. The test is skipped (or failed with
// FIELDHUB_REQUIRE_ALL=1) when mosquitto is not installed.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin := testkit.Binary(t, "mosquitto")
	dir := t.TempDir()
	s := &Server{bin: bin, conf: filepath.Join(dir, "mosquitto.conf"), log: filepath.Join(dir, "mosquitto.log")}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			b, _ := os.ReadFile(s.log)
			t.Logf("mosquitto log (%s):\n%s", s.log, tail(b, 16<<10))
		}
	})

	var extra strings.Builder
	// Started as root, mosquitto switches to the "mosquitto" user, which
	// cannot read the files in the test's private folder: stay who we are.
	if u, err := user.Current(); err == nil {
		fmt.Fprintf(&extra, "user %s\n", u.Username)
	}
	if len(o.Users) > 0 {
		pw := filepath.Join(dir, "passwd")
		names := make([]string, 0, len(o.Users))
		for u := range o.Users {
			names = append(names, u)
		}
		sort.Strings(names)
		for i, u := range names {
			args := []string{"-b", pw, u, o.Users[u]}
			if i == 0 {
				args = append([]string{"-c"}, args...)
			}
			if out, err := exec.Command(testkit.Binary(t, "mosquitto_passwd"), args...).CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_passwd: %v: %s", err, out)
			}
		}
		fmt.Fprintf(&extra, "allow_anonymous false\npassword_file %s\n", pw)
	} else {
		extra.WriteString("allow_anonymous true\n")
	}
	if o.ACL != "" {
		acl := filepath.Join(dir, "acl")
		if err := os.WriteFile(acl, []byte(o.ACL), 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&extra, "acl_file %s\n", acl)
	}
	extra.WriteString(o.Extra)

	// The port is picked free but mosquitto binds it later: try again with
	// another port if it was taken meanwhile.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		s.Addr = testkit.FreeAddr(t)
		s.URL = "tcp://" + s.Addr
		_, port, _ := net.SplitHostPort(s.Addr)
		conf := fmt.Sprintf("listener %s 127.0.0.1\npersistence false\nmax_queued_messages 1000000\nset_tcp_nodelay true\n"+
			"log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_timestamp_format %%H:%%M:%%S\n%s\n", port, extra.String())
		if err = os.WriteFile(s.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		if err = s.start(); err == nil {
			return s
		}
		s.stop()
	}
	t.Fatalf("mosquittotest: %v", err)
	return nil
}

func (s *Server) start() error {
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, "-c", s.conf)
	cmd.Stdout, cmd.Stderr = logf, logf
	testkit.KillWithTest(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start mosquitto: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", s.Addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			b, _ := os.ReadFile(s.log)
			return fmt.Errorf("mosquitto exited at startup: %s", tail(b, 2048))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("mosquitto did not listen on %s", s.Addr)
		}
	}
}

// Log returns what mosquitto logged so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.log)
	return string(b)
}

// Stop stops the broker now (SIGTERM, then SIGKILL), e.g. to test what
// clients do when it dies. The test's cleanup stops it anyway.
func (s *Server) Stop() { s.stop() }

func (s *Server) stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return
	case <-time.After(10 * time.Second):
	}
	_ = cmd.Process.Kill()
	<-done
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return b
}
