// Package mosquittotest runs a real Mosquitto broker (Debian's
// /usr/sbin/mosquitto) for tests: on a free loopback port, with its files in
// t.TempDir(), stopped when the test ends.
package mosquittotest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strings"
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

	bin, conf string
	proc      testkit.Process
}

// Start runs mosquitto. The test is skipped (or failed with
// FIELDHUB_REQUIRE_ALL=1) when mosquitto is not installed.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin := testkit.Binary(t, "mosquitto")
	dir := t.TempDir()
	s := &Server{bin: bin, conf: filepath.Join(dir, "mosquitto.conf"), proc: testkit.Process{Log: filepath.Join(dir, "mosquitto.log")}}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("mosquitto log (%s):\n%s", s.proc.Log, s.proc.Tail(16<<10))
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
	return s.proc.Start(exec.Command(s.bin, "-c", s.conf), 15*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// Stop stops the broker now (SIGTERM, then SIGKILL), e.g. to test what
// clients do when it dies. The test's cleanup stops it anyway.
func (s *Server) Stop() { s.stop() }

func (s *Server) stop() { s.proc.Stop(10 * time.Second) }
