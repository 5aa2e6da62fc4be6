package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/hub"
	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/internal/testkit/hubproc"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/store"
)

// startHubProc runs `fieldhub serve` on dataDir as a child process.
func startHubProc(t *testing.T, dataDir string, extra ...string) *hubproc.Proc {
	t.Helper()
	return hubproc.Start(t, dataDir, extra...)
}

// run runs the fieldhub CLI and returns stdout.
func run(t *testing.T, env []string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, hubproc.Build(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func apiGet(t *testing.T, p *hubproc.Proc, dataDir, path string, out any) {
	t.Helper()
	tok, err := os.ReadFile(filepath.Join(dataDir, hub.AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://"+p.Addrs().HTTP+path, nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s %s", path, resp.Status, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, b)
	}
}

// TestKillNineLosesNoAckedReading: 50 QoS 1 publishers send numbered
// readings; the hub is killed with SIGKILL mid-stream and restarted; every
// reading whose PUBACK a publisher received is stored.
func TestKillNineLosesNoAckedReading(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the hub as a child process")
	}
	dataDir := t.TempDir()
	p := startHubProc(t, dataDir)

	const devices = 50
	ctx := context.Background()
	reg, err := registry.Open(ctx, filepath.Join(dataDir, "registry.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tokens := make([]string, devices)
	for i := range devices {
		if _, tokens[i], err = reg.CreateDevice(ctx, registry.DeviceSpec{ID: fmt.Sprintf("k9-%02d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	reg.Close()

	base := time.Now().Add(-10 * time.Minute).UnixMilli()
	acked := make([][]int, devices)
	var total atomic.Int64
	var wg sync.WaitGroup
	for i := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("k9-%02d", i)
			o := mqtt.NewClientOptions().AddBroker("tcp://" + p.Addrs().MQTT).SetClientID(id).SetUsername(id).SetPassword(tokens[i]).
				SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetWriteTimeout(5 * time.Second)
			c := mqtt.NewClient(o)
			if tk := c.Connect(); !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
				t.Errorf("%s connect: %v", id, tk.Error())
				return
			}
			defer c.Disconnect(0)
			for seq := 0; ; seq++ {
				pl := fmt.Sprintf(`{"ts": %d, "seq": %d, "metrics": {"n": %d}}`, base+int64(seq), seq, seq)
				tk := c.Publish("devices/"+id+"/telemetry", 1, false, pl)
				if !tk.WaitTimeout(10*time.Second) || tk.Error() != nil || !c.IsConnectionOpen() {
					return // the hub is gone: this reading was not acknowledged
				}
				acked[i] = append(acked[i], seq)
				total.Add(1)
			}
		}()
	}
	testkit.Eventually(t, 60*time.Second, func() bool { return total.Load() >= 3000 }, "3000 acknowledged readings")
	p.Signal(syscall.SIGKILL)
	p.Wait()
	wg.Wait()
	t.Logf("%d readings acknowledged before SIGKILL", total.Load())

	p2 := startHubProc(t, dataDir)
	missing := 0
	for i := range devices {
		var pts []store.Point
		apiGet(t, p2, dataDir, fmt.Sprintf("/api/v1/devices/k9-%02d/telemetry/n?from=%d&to=%d", i, base, base+1_000_000), &pts)
		got := make(map[int64]float64, len(pts))
		for _, pt := range pts {
			got[pt.TS] = pt.Value
		}
		for _, seq := range acked[i] {
			if v, ok := got[base+int64(seq)]; !ok || v != float64(seq) {
				missing++
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d acknowledged readings missing after kill -9 and restart", missing)
	}
}

// TestCLI drives the device and telemetry commands against a running hub
// and against a stopped one.
func TestCLI(t *testing.T) {
	dataDir := t.TempDir()
	p := startHubProc(t, dataDir)
	dd := []string{"--data-dir", dataDir}

	out, errOut, err := run(t, nil, append([]string{"device", "add", "cli-1", "--type", "meter", "--label", "site=lab"}, dd...)...)
	if err != nil {
		t.Fatalf("device add: %v %s", err, errOut)
	}
	tok := strings.TrimSpace(out)
	if strings.Count(out, "\n") != 1 || !strings.HasPrefix(tok, "fhd_") || len(tok) < 30 {
		t.Fatalf("device add printed %q, want only the token", out)
	}
	if _, errOut, err := run(t, nil, append([]string{"device", "add", "cli-1"}, dd...)...); err == nil || !strings.Contains(errOut, "exist") {
		t.Fatalf("adding a device twice: err=%v stderr=%q", err, errOut)
	}
	if _, errOut, err := run(t, nil, append([]string{"device", "add", "bad/id"}, dd...)...); err == nil || !strings.Contains(errOut, "device id") {
		t.Fatalf("adding a bad id: err=%v stderr=%q", err, errOut)
	}
	out, _, err = run(t, nil, append([]string{"device", "list"}, dd...)...)
	if err != nil || !strings.Contains(out, "cli-1") || !strings.Contains(out, "site=lab") {
		t.Fatalf("device list: %v %q", err, out)
	}

	// Publish with the printed token, then read it back through the running hub.
	host, port, _ := strings.Cut(p.Addrs().MQTT, ":")
	ts := time.Now().Add(-time.Minute).UnixMilli()
	pub := exec.Command(testkit.Binary(t, "mosquitto_pub"), "-h", host, "-p", port, "-i", "cli-1", "-u", "cli-1", "-P", tok,
		"-q", "1", "-t", "devices/cli-1/telemetry", "-m", fmt.Sprintf(`{"ts": %d, "metrics": {"power": 42.5}}`, ts))
	if b, err := pub.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v %s", err, b)
	}
	checkLatest := func(when string) {
		out, errOut, err := run(t, nil, append([]string{"telemetry", "latest", "cli-1"}, dd...)...)
		if err != nil {
			t.Fatalf("%s: telemetry latest: %v %s", when, err, errOut)
		}
		var got []struct {
			Metric string
			TS     int64
			Value  float64
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 1 || got[0].Value != 42.5 || got[0].TS != ts {
			t.Fatalf("%s: telemetry latest = %s (%v)", when, out, err)
		}
		out, _, err = run(t, nil, append([]string{"telemetry", "query", "cli-1", "power", "--from", "1h"}, dd...)...)
		var pts []store.Point
		if err != nil || json.Unmarshal([]byte(out), &pts) != nil || len(pts) != 1 || pts[0].Value != 42.5 {
			t.Fatalf("%s: telemetry query = %s (%v)", when, out, err)
		}
	}
	checkLatest("hub running")

	// rotate-token: the old token stops working.
	out, _, err = run(t, nil, append([]string{"device", "rotate-token", "cli-1"}, dd...)...)
	if err != nil || strings.TrimSpace(out) == tok {
		t.Fatalf("rotate-token: %v %q", err, out)
	}
	pub = exec.Command(testkit.Binary(t, "mosquitto_pub"), "-h", host, "-p", port, "-i", "cli-1", "-u", "cli-1", "-P", tok,
		"-q", "1", "-t", "devices/cli-1/telemetry", "-m", `{"metrics": {"power": 1}}`)
	if err := pub.Run(); err == nil {
		t.Fatal("the old token still connects after rotate-token")
	}

	// Stop the hub (SIGTERM: ordered shutdown) and read the store directly.
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("hub did not stop on SIGTERM")
	}
	if code := p.Wait(); code != 0 {
		t.Fatalf("hub exit code %d after SIGTERM", code)
	}
	checkLatest("hub stopped")

	if _, _, err := run(t, nil, append([]string{"device", "rm", "cli-1"}, dd...)...); err != nil {
		t.Fatalf("device rm: %v", err)
	}
	if _, _, err := run(t, nil, append([]string{"device", "show", "cli-1"}, dd...)...); err == nil {
		t.Fatal("device show after rm succeeded")
	}
}

func TestHelpEverywhere(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"serve", "--help"}, {"device", "--help"}, {"device", "add", "--help"}, {"device", "list", "--help"},
		{"device", "show", "--help"}, {"device", "rm", "--help"}, {"device", "rotate-token", "--help"},
		{"telemetry", "latest", "--help"}, {"telemetry", "query", "--help"}, {"deadletter", "list", "--help"},
		{"deadletter", "replay", "--help"}, {"version", "--help"},
		{"command", "send", "--help"}, {"command", "list", "--help"}, {"command", "show", "--help"}, {"command", "cancel", "--help"},
		{"twin", "get", "--help"}, {"twin", "set", "--help"},
	} {
		out, _, err := run(t, nil, args...)
		if err != nil || !strings.Contains(out, "Usage:") {
			t.Errorf("fieldhub %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	out, _, err := run(t, nil, "--help")
	if err == nil && !strings.Contains(out, "--mqtt-addr") {
		t.Errorf("--help does not document the config flags:\n%s", out)
	}
}

func TestConfigErrorsStopStartup(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("mqtt:\n  adr: \":1883\"\n"), 0o600)
	_, errOut, err := run(t, nil, "serve", "--config", bad, "--data-dir", dir)
	if err == nil || !strings.Contains(errOut, "mqtt.adr") {
		t.Fatalf("unknown key: err=%v stderr=%q", err, errOut)
	}
	_, errOut, err = run(t, []string{"FIELDHUB_MQTT_CONNECT_TIMEOUT=soon"}, "serve", "--data-dir", dir)
	if err == nil || !strings.Contains(errOut, "connect_timeout") {
		t.Fatalf("bad value: err=%v stderr=%q", err, errOut)
	}
	sc := bufio.NewScanner(strings.NewReader(errOut))
	for sc.Scan() {
		t.Log(sc.Text())
	}
}
