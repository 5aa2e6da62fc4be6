package hub

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/dashboard"
	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/telemetry"
)

func adminToken(t *testing.T, h *Hub) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.cfg.DataDir, AdminTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestDashboardAPILiveHub runs the live view over the real wiring: a paho
// device connects and publishes QoS 1 readings through the embedded broker
// while one browser-like client follows the event stream and another opens
// it and never reads. Every PUBACK arrives (ingest is never held up by the
// stalled client), the stalled client is dropped, the reading client sees
// presence, readings in publish order and a command event, the summary
// counts the device and the reading rate, and the hub stops with a stream
// still open.
func TestDashboardAPILiveHub(t *testing.T) {
	h := startHub(t, testConfig(t))
	base := "http://" + h.Addrs().HTTP
	admin := adminToken(t, h)
	tok := addDevice(t, h, "live-1", "")

	// The reading client.
	req, _ := http.NewRequest("GET", base+"/api/v1/events", nil)
	req.Header.Set("Authorization", "Bearer "+admin)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	events := make(chan dashboard.Event, 100000)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var ev dashboard.Event
				if json.Unmarshal([]byte(data), &ev) == nil {
					events <- ev
				}
			}
		}
	}()
	// The stalled client: a 1 KiB receive buffer, never read.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 1024) })
		return err
	}}
	stalled, err := d.Dial("tcp", h.Addrs().HTTP)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	fmt.Fprintf(stalled, "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", admin)
	testkit.Eventually(t, 10*time.Second, func() bool { return h.Events.Stats().Subscribers == 2 }, "two event subscribers")

	c := pahoClient(t, h, "live-1", tok, false)
	var metrics strings.Builder
	for i := range 100 {
		fmt.Fprintf(&metrics, `, "metric_with_a_long_name_%03d": %d.5`, i, i)
	}
	published := 0
	publish := func() {
		t.Helper()
		p := fmt.Sprintf(`{"metrics": {"seq": %d%s}}`, published, metrics.String())
		if tk := c.Publish(telemetry.TelemetryTopic("live-1"), 1, false, p); !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
			t.Fatalf("publish %d: no PUBACK: %v", published, tk.Error())
		}
		published++
	}
	deadline := time.Now().Add(60 * time.Second)
	for h.Events.Stats().Dropped == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the stalled client was not dropped after %d acknowledged publishes", published)
		}
		publish()
	}
	for range 20 { // and ingest goes on
		publish()
	}
	t.Logf("stalled client dropped; %d publishes acknowledged", published)

	// The reading client got presence, then every reading in order.
	sawPresence, next := false, 0
	timeout := time.After(30 * time.Second)
	for next < published {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("the reading client's stream ended at reading %d (dropped too?)", next)
			}
			switch ev.Type {
			case dashboard.EventPresence:
				sawPresence = sawPresence || (ev.Device == "live-1" && next == 0)
			case dashboard.EventReading:
				var rd dashboard.ReadingData
				b, _ := json.Marshal(ev.Data)
				json.Unmarshal(b, &rd)
				for _, s := range rd.Samples {
					if s.Metric == "seq" {
						if int(s.Value) != next {
							t.Fatalf("reading seq %v, want %d", s.Value, next)
						}
						next++
					}
				}
			}
		case <-timeout:
			t.Fatalf("got %d of %d readings", next, published)
		}
	}
	if !sawPresence {
		t.Error("no presence event before the readings")
	}

	// A command shows up live.
	body := strings.NewReader(`{"name": "reboot"}`)
	creq, _ := http.NewRequest("POST", base+"/api/v1/devices/live-1/commands", body)
	creq.Header.Set("Authorization", "Bearer "+admin)
	cres, err := http.DefaultClient.Do(creq)
	if err != nil || cres.StatusCode != 201 {
		t.Fatalf("send command: %v %v", err, cres.Status)
	}
	cres.Body.Close()
	for ev := range events {
		if ev.Type == dashboard.EventCommand && ev.Device == "live-1" {
			break
		}
	}

	// The summary counts the device and the readings.
	testkit.Eventually(t, 10*time.Second, func() bool {
		sreq, _ := http.NewRequest("GET", base+"/api/v1/summary", nil)
		sreq.Header.Set("Authorization", "Bearer "+admin)
		sres, err := http.DefaultClient.Do(sreq)
		if err != nil {
			return false
		}
		defer sres.Body.Close()
		var s dashboard.Summary
		b, _ := io.ReadAll(sres.Body)
		json.Unmarshal(b, &s)
		return s.Devices.Total == 1 && s.Devices.Online == 1 && s.Rates.ReadingsPerSec > 0
	}, "the summary with one online device and a reading rate")

	// Stop with the stream open: it ends, and Stop returns.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.Stop(ctx); err != nil {
		t.Fatalf("stop with an open event stream: %v", err)
	}
	for range events {
	}
}
