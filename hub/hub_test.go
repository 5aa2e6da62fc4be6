package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/fieldhub/fieldhub/config"
	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/store"
)

// testConfig is the embedded default config on free loopback ports and a
// temp data dir.
func testConfig(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := config.Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = t.TempDir()
	cfg.MQTT.Addr = "127.0.0.1:0"
	cfg.MQTT.WSAddr = ""
	cfg.HTTP.Addr = "127.0.0.1:0"
	return cfg
}

func startHub(t *testing.T, cfg *config.Config) *Hub {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	h, err := New(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := h.Stop(ctx); err != nil {
			t.Errorf("stop hub: %v", err)
		}
	})
	return h
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func addDevice(t *testing.T, h *Hub, id, typ string) string {
	t.Helper()
	_, tok, err := h.Registry.CreateDevice(context.Background(), registry.DeviceSpec{ID: id, Type: typ})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// mosquittoPub runs Debian's mosquitto_pub against the hub.
func mosquittoPub(t *testing.T, h *Hub, id, token string, extra ...string) (string, error) {
	t.Helper()
	bin := testkit.Binary(t, "mosquitto_pub")
	host, port, _ := strings.Cut(h.Addrs().MQTT, ":")
	args := append([]string{"-h", host, "-p", port, "-i", id, "-u", id, "-P", token}, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

func series(t *testing.T, h *Hub, device, metric string) []store.Point {
	t.Helper()
	pts, err := h.Store.Series(context.Background(), store.SeriesQuery{Device: device, Metric: metric, From: 0, To: time.Now().Add(time.Hour).UnixMilli()})
	if err != nil {
		t.Fatal(err)
	}
	return pts
}

func pahoClient(t *testing.T, h *Hub, id, token string, v5 bool) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker("tcp://" + h.Addrs().MQTT).SetClientID(id).SetUsername(id).SetPassword(token).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("paho connect %s: %v", id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func TestTelemetryEndToEndTSDB(t *testing.T) {
	h := startHub(t, testConfig(t))
	tok := addDevice(t, h, "th-1", "thermostat")
	ts := time.Now().Add(-time.Minute).UnixMilli()

	// mosquitto_pub, QoS 1: when it exits 0 it has the PUBACK, so the reading is stored.
	payload := fmt.Sprintf(`{"ts": %d, "seq": 1, "metrics": {"temperature": 21.5, "heating": true, "mode": "eco"}}`, ts)
	if out, err := mosquittoPub(t, h, "th-1", tok, "-q", "1", "-t", "devices/th-1/telemetry", "-m", payload); err != nil {
		t.Fatalf("mosquitto_pub: %v\n%s", err, out)
	}
	if pts := series(t, h, "th-1", "temperature"); len(pts) != 1 || pts[0] != (store.Point{TS: ts, Value: 21.5}) {
		t.Fatalf("temperature = %+v, want one point %d=21.5", pts, ts)
	}
	if pts := series(t, h, "th-1", "heating"); len(pts) != 1 || pts[0].Value != 1 {
		t.Fatalf("heating (bool as 1) = %+v", pts)
	}
	evs, err := h.Registry.Events(context.Background(), "th-1", 0, time.Now().UnixMilli(), 10)
	if err != nil || len(evs) != 1 || evs[0].Value != "eco" {
		t.Fatalf("string metric event = %+v, %v", evs, err)
	}

	// paho, QoS 1, a batch of two readings.
	c := pahoClient(t, h, "th-1", tok, false)
	batch := fmt.Sprintf(`[{"ts": %d, "metrics": {"temperature": 22}}, {"ts": %d, "metrics": {"temperature": 23}}]`, ts+1000, ts+2000)
	if tk := c.Publish("devices/th-1/telemetry", 1, false, batch); !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
		t.Fatalf("paho publish: %v", tk.Error())
	}
	if pts := series(t, h, "th-1", "temperature"); len(pts) != 3 || pts[2].Value != 23 {
		t.Fatalf("after batch temperature = %+v", pts)
	}
	latest, err := h.Store.Latest(context.Background(), "th-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range latest {
		if s.Metric == "temperature" && (s.Value != 23 || s.TS != ts+2000) {
			t.Fatalf("latest temperature = %+v", s)
		}
	}
}

func TestDuplicateStoredOnce(t *testing.T) {
	h := startHub(t, testConfig(t))
	tok := addDevice(t, h, "dup-1", "")
	payload := fmt.Sprintf(`{"ts": %d, "seq": 7, "metrics": {"v": 1.5}}`, time.Now().UnixMilli()-1000)
	for range 2 {
		if out, err := mosquittoPub(t, h, "dup-1", tok, "-q", "1", "-t", "devices/dup-1/telemetry", "-m", payload); err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
	}
	if pts := series(t, h, "dup-1", "v"); len(pts) != 1 {
		t.Fatalf("same sample twice: %d points stored, want 1: %+v", len(pts), pts)
	}
}

// TestRejectedAreDeadLettered sends each kind of invalid payload: each is
// kept as a dead letter with its reason, reported on devices/{id}/errors,
// and answered with PUBACK reason 0x99 to an MQTT 5 publisher. After the
// schema is relaxed, replay stores them.
func TestRejectedAreDeadLettered(t *testing.T) {
	cfg := testConfig(t)
	h := startHub(t, cfg)
	tok := addDevice(t, h, "th-2", "thermostat")
	now := time.Now()
	cases := []struct {
		name, payload, reason string
	}{
		{"bad json", `{"metrics": {"temperature": 21.5`, "bad_payload"},
		{"wrong type", `{"metrics": {"temperature": "warm"}}`, "wrong_type"},
		{"out of range", `{"metrics": {"temperature": 500}}`, "out_of_range"},
		{"unknown metric in strict type", `{"metrics": {"pressure": 1013}}`, "unknown_metric"},
		{"too old", fmt.Sprintf(`{"ts": %d, "metrics": {"temperature": 20}}`, now.Add(-30*24*time.Hour).UnixMilli()), "too_old"},
	}

	// The device listens on its errors topic with paho (as firmware would).
	var mu sync.Mutex
	var reports []map[string]any
	c := pahoClient(t, h, "th-2", tok, false)
	if tk := c.Subscribe("devices/th-2/errors", 1, func(_ mqtt.Client, m mqtt.Message) {
		var r map[string]any
		_ = json.Unmarshal(m.Payload(), &r)
		mu.Lock()
		reports = append(reports, r)
		mu.Unlock()
	}); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
		t.Fatalf("subscribe errors: %v", tk.Error())
	}

	for _, tc := range cases {
		if tk := c.Publish("devices/th-2/telemetry", 1, false, tc.payload); !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
			t.Fatalf("%s: publish: %v", tc.name, tk.Error())
		}
	}
	testkit.Eventually(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(reports) >= len(cases)
	}, "a report on devices/th-2/errors for each rejected message")
	// MQTT 5: mosquitto_pub prints the PUBACK's reason code 0x99.
	c.Disconnect(100)
	out, _ := mosquittoPub(t, h, "th-2", tok, "-V", "5", "-q", "1", "-t", "devices/th-2/telemetry", "-m", `{"metrics": {"temperature": 999}}`)
	if !strings.Contains(strings.ToLower(out), "payload format invalid") {
		t.Fatalf("MQTT 5 publish of an invalid payload: output=%q, want a 0x99 'payload format invalid' PUBACK", out)
	}

	dls, err := h.Registry.DeadLetters(context.Background(), registry.DeadLetterFilter{Device: "th-2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != len(cases)+1 {
		t.Fatalf("%d dead letters, want %d: %+v", len(dls), len(cases)+1, dls)
	}
	for i, tc := range cases {
		if dls[i].Reason != tc.reason || string(dls[i].Payload) != tc.payload {
			t.Errorf("%s: dead letter = %q %q, want reason %q with the raw payload", tc.name, dls[i].Reason, dls[i].Payload, tc.reason)
		}
	}
	mu.Lock()
	for i, tc := range cases {
		if reports[i]["reason"] != tc.reason {
			t.Errorf("report %d = %v, want reason %s", i, reports[i], tc.reason)
		}
	}
	mu.Unlock()
	metrics := scrape(t, h)
	if !strings.Contains(metrics, `fieldhub_ingest_rejected_total{device="th-2",reason="out_of_range"} 2`) {
		t.Errorf("rejections not counted per device and reason in /metrics")
	}

	// Relax the schema: the thermostat type accepts anything now. Restart
	// the hub on the same data dir and replay.
	ctx := context.Background()
	stopCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := h.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}
	cfg2 := *cfg
	cfg2.Types = nil
	h2 := startHub(t, &cfg2)
	replayed := 0
	for _, d := range dls {
		err := h2.Ingest.Replay(ctx, d.ID)
		if d.Reason == "bad_payload" || d.Reason == "too_old" {
			if err == nil {
				t.Errorf("replay of %s dead letter succeeded, want still invalid", d.Reason)
			}
			continue
		}
		if err != nil {
			t.Errorf("replay %d (%s): %v", d.ID, d.Reason, err)
			continue
		}
		replayed++
	}
	if replayed != 4 {
		t.Fatalf("replayed %d, want 4", replayed)
	}
	if pts := series(t, h2, "th-2", "temperature"); len(pts) != 2 { // 500 and 999; the "warm" string went to events
		t.Errorf("after replay temperature = %+v, want 2 points", pts)
	}
	if pts := series(t, h2, "th-2", "pressure"); len(pts) != 1 {
		t.Errorf("after replay pressure = %+v", pts)
	}
	left, _ := h2.Registry.DeadLetters(ctx, registry.DeadLetterFilter{Device: "th-2"})
	if len(left) != 2 {
		t.Errorf("%d dead letters left unreplayed, want 2 (bad json, too old)", len(left))
	}
}

func scrape(t *testing.T, h *Hub) string {
	t.Helper()
	mfs, err := h.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			fmt.Fprintf(&buf, "%s{%s} %g\n", mf.GetName(), strings.Join(labels, ","), v)
		}
	}
	return buf.String()
}
