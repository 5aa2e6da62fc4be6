package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fieldhub/fieldhub/devicesim"
	"github.com/fieldhub/fieldhub/internal/testkit/hubproc"
	"github.com/fieldhub/fieldhub/internal/testkit/mosquittotest"
)

// run executes the CLI in-process and returns stdout, stderr and the error.
func run(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	root := newRoot(&out, &errb)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return out.String(), errb.String(), err
}

func startMosquitto(t *testing.T) string {
	t.Helper()
	return mosquittotest.Start(t, mosquittotest.Options{Extra: "max_inflight_messages 0\nmax_connections -1\n"}).URL
}

func writeProfile(t *testing.T, y string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "profile.yaml")
	if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func exitCode(err error) int {
	var ee exitError
	if errors.As(err, &ee) {
		return int(ee)
	}
	if err != nil {
		return 2
	}
	return 0
}

func TestLoadCommandAgainstMosquitto(t *testing.T) {
	broker := startMosquitto(t)
	out, stderr, err := run(t, "load", "--broker", broker, "--anonymous", "--devices", "20", "--rate", "20", "--qos", "1", "--duration", "2s", "--json")
	if err != nil {
		t.Fatalf("load: %v\n%s", err, stderr)
	}
	var rep devicesim.LoadReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("report %q: %v", out, err)
	}
	if rep.Sent == 0 || rep.Sent != rep.Acked+rep.ErrorCount()+rep.InFlight || rep.Connected != 20 {
		t.Errorf("report does not add up: %+v", rep)
	}
	if !strings.Contains(stderr, "sent=") || !strings.Contains(stderr, "rate=") {
		t.Errorf("no progress line on stderr: %q", stderr)
	}
	out, _, err = run(t, "load", "--broker", broker, "--anonymous", "--devices", "5", "--closed-loop", "--qos", "0", "--duration", "1s", "--progress=false")
	if err != nil || !strings.Contains(out, "latency ms: p50") || !strings.Contains(out, "closed loop") {
		t.Errorf("text report: %v\n%s", err, out)
	}
	if _, _, err := run(t, "load", "--broker", broker, "--devices", "5"); err == nil || !strings.Contains(err.Error(), "--credentials") {
		t.Errorf("load without credentials: %v", err)
	}
}

func TestRunCommandAgainstMosquitto(t *testing.T) {
	broker := startMosquitto(t)
	prof := writeProfile(t, `
seed: 1
interval: 50ms
faults: {malformed_pct: 20}
devices:
  - type: sensor
    count: 2
    metrics:
      t: {model: sine, period: 1s, amplitude: 1, offset: 5}
`)
	out, stderr, err := run(t, "run", "--profile", prof, "--broker", broker, "--anonymous", "--duration", "1s", "--expect", "delivered=all", "--expect", "replies=0")
	if err != nil {
		t.Fatalf("run: %v\n%s\n%s", err, out, stderr)
	}
	if !strings.Contains(out, "ok   delivered=all") || !strings.Contains(out, "malformed") {
		t.Errorf("summary: %s", out)
	}
	// A failing expectation exits 1, and says which.
	out, _, err = run(t, "run", "--profile", prof, "--broker", broker, "--anonymous", "--duration", "300ms", "--settle", "1s", "--expect", "delivered=0", "--json")
	if exitCode(err) != 1 {
		t.Fatalf("exit %d (%v), want 1", exitCode(err), err)
	}
	var res struct {
		Passed       bool                `json:"passed"`
		Expectations []devicesim.Outcome `json:"expectations"`
		Stats        map[string]uint64   `json:"stats"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Passed || len(res.Expectations) != 1 || res.Expectations[0].OK || res.Stats["fault_malformed"] == 0 {
		t.Errorf("json result %s: %v", out, err)
	}
	// Bad input is refused with a message naming it.
	bad := writeProfile(t, "devices:\n  - type: s\n    count: 1\n    colour: red\n    metrics: {t: {model: toggle}}\n")
	if _, _, err := run(t, "run", "--profile", bad, "--anonymous"); exitCode(err) != 2 || !strings.Contains(err.Error(), `unknown key "colour"`) {
		t.Errorf("bad profile: %v", err)
	}
	if _, _, err := run(t, "run", "--profile", prof, "--anonymous", "--expect", "stord=1"); err == nil || !strings.Contains(err.Error(), `unknown key "stord"`) {
		t.Errorf("bad expectation: %v", err)
	}
}

// TestAgainstFieldhubProvisionAndRun: the documented CI flow, provision
// then run with expectations checked through the fieldhub CLI.
func TestAgainstFieldhubProvisionAndRun(t *testing.T) {
	hub := hubproc.Start(t, t.TempDir())
	bin, dataDir := hubproc.Build(t), hub.DataDir

	prof := writeProfile(t, `
seed: 8
id_prefix: cli-
interval: 40ms
faults: {malformed_pct: 10, out_of_range_pct: 10}
devices:
  - type: thermostat
    count: 2
    metrics:
      temperature: {model: sine, period: 2s, amplitude: 2, offset: 20, decimals: 2}
      heating: {model: toggle, probability: 0.2}
expect: [stored=all, rejected=all, errors=all]
`)
	creds := filepath.Join(t.TempDir(), "creds.csv")
	if _, stderr, err := run(t, "provision", "--profile", prof, "--fieldhub", bin, "--data-dir", dataDir, "--credentials", creds); err != nil {
		t.Fatalf("provision: %v\n%s", err, stderr)
	}
	if st, err := os.Stat(creds); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v %v", st, err)
	}
	cs, err := devicesim.ReadCredentials(creds)
	if err != nil || len(cs) != 2 || cs[0].ID != "cli-thermostat-001" {
		t.Fatalf("credentials: %v %v", cs, err)
	}
	// The broker comes from the hub's run file on --data-dir.
	out, stderr, err := run(t, "run", "--profile", prof, "--fieldhub", bin, "--data-dir", dataDir, "--credentials", creds, "--duration", "1500ms")
	if err != nil {
		t.Fatalf("run: %v\n%s\n%s", err, out, stderr)
	}
	for _, want := range []string{"ok   stored=all", "ok   rejected=all", "ok   errors=all"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	// A wrong expectation fails the run.
	if _, _, err := run(t, "run", "--profile", prof, "--fieldhub", bin, "--data-dir", dataDir, "--credentials", creds,
		"--duration", "200ms", "--settle", "2s", "--expect", "stored=999999"); exitCode(err) != 1 {
		t.Errorf("exit %d (%v), want 1", exitCode(err), err)
	}
}
