package hub

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/config"
	"github.com/fieldhub/fieldhub/internal/testkit"
	"github.com/fieldhub/fieldhub/internal/testkit/influxdtest"
	"github.com/fieldhub/fieldhub/store"
)

func influxConfig(t *testing.T, srv *influxdtest.Server) *config.Config {
	cfg := testConfig(t)
	cfg.Store.Backend = "influx"
	cfg.Store.Influx.URL = srv.URL
	cfg.Store.Influx.Bucket = srv.Bucket
	cfg.Store.Influx.Org = srv.Org
	cfg.Store.Influx.Token = srv.Token
	return cfg
}

func TestTelemetryEndToEndInflux(t *testing.T) {
	srv := influxdtest.Start(t)
	h := startHub(t, influxConfig(t, srv))
	tok := addDevice(t, h, "ix-1", "")
	ts := time.Now().Add(-time.Minute).UnixMilli()
	payload := fmt.Sprintf(`{"ts": %d, "metrics": {"temperature": 19.25, "open": false}}`, ts)
	for range 2 { // the same sample twice is stored once
		if out, err := mosquittoPub(t, h, "ix-1", tok, "-q", "1", "-t", "devices/ix-1/telemetry", "-m", payload); err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
	}
	if pts := series(t, h, "ix-1", "temperature"); len(pts) != 1 || pts[0] != (store.Point{TS: ts, Value: 19.25}) {
		t.Fatalf("temperature from influxd = %+v, want one point %d=19.25", pts, ts)
	}
	c := pahoClient(t, h, "ix-1", tok, false)
	if tk := c.Publish("devices/ix-1/telemetry", 1, false, fmt.Sprintf(`{"ts": %d, "metrics": {"temperature": 20}}`, ts+500)); !tk.WaitTimeout(20*time.Second) || tk.Error() != nil {
		t.Fatalf("paho publish: %v", tk.Error())
	}
	if pts := series(t, h, "ix-1", "temperature"); len(pts) != 2 {
		t.Fatalf("after paho publish: %+v", pts)
	}
	if pts := series(t, h, "ix-1", "open"); len(pts) != 1 || pts[0].Value != 0 {
		t.Fatalf("bool from influxd = %+v", pts)
	}
}

// TestInfluxOutageLosesNothing stops influxd under load: PUBACKs are
// withheld while it is down (back-pressure), the hub keeps accepting
// connections, its heap stays bounded, and when influxd returns every
// acknowledged reading is there.
func TestInfluxOutageLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("outage under load")
	}
	srv := influxdtest.Start(t)
	h := startHub(t, influxConfig(t, srv))
	const devices = 20
	tokens := make([]string, devices)
	for i := range devices {
		tokens[i] = addDevice(t, h, fmt.Sprintf("out-%02d", i), "")
	}
	base := time.Now().Add(-10 * time.Minute).UnixMilli()
	acked := make([][]int, devices)
	var total atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range devices {
		id := fmt.Sprintf("out-%02d", i)
		c := pahoClient(t, h, id, tokens[i], false)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				tk := c.Publish("devices/"+id+"/telemetry", 1, false, fmt.Sprintf(`{"ts": %d, "metrics": {"n": %d}}`, base+int64(seq), seq))
				if !tk.WaitTimeout(2*time.Minute) || tk.Error() != nil {
					t.Errorf("%s seq %d: not acknowledged: %v", id, seq, tk.Error())
					return
				}
				acked[i] = append(acked[i], seq)
				total.Add(1)
			}
		}()
	}
	testkit.Eventually(t, 60*time.Second, func() bool { return total.Load() >= 500 }, "500 readings before the outage")
	srv.Stop(t)
	before := total.Load()
	time.Sleep(3 * time.Second)
	during := total.Load()
	// Devices can still connect while the store is down.
	extra := addDevice(t, h, "out-late", "")
	lc := pahoClient(t, h, "out-late", extra, false)
	if !lc.IsConnected() {
		t.Fatal("a device could not connect during the outage")
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("outage: %d acked before, %d more during 3s of outage (in-flight commits), heap %d MiB", before, during-before, ms.HeapAlloc>>20)
	if ms.HeapAlloc > 512<<20 {
		t.Errorf("heap %d MiB during the outage: not bounded", ms.HeapAlloc>>20)
	}
	srv.Restart(t)
	testkit.Eventually(t, 2*time.Minute, func() bool { return total.Load() >= during+500 }, "500 more readings after influxd returned")
	close(stop)
	wg.Wait()

	missing := 0
	for i := range devices {
		pts, err := h.Store.Series(context.Background(), store.SeriesQuery{Device: fmt.Sprintf("out-%02d", i), Metric: "n", From: base, To: base + 10_000_000})
		if err != nil {
			t.Fatal(err)
		}
		got := map[int64]bool{}
		for _, p := range pts {
			got[p.TS] = true
		}
		for _, seq := range acked[i] {
			if !got[base+int64(seq)] {
				missing++
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d acknowledged readings missing after the influxd outage", missing)
	}
	if m := scrape(t, h); !containsMetric(m, "fieldhub_influx_write_failures_total") {
		t.Errorf("influx write failures not counted")
	}
}

// containsMetric reports whether a scraped metric has a non-zero sample.
func containsMetric(scraped, name string) bool {
	for _, line := range strings.Split(scraped, "\n") {
		if strings.HasPrefix(line, name+"{") && !strings.HasSuffix(line, " 0") {
			return true
		}
	}
	return false
}
