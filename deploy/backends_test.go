// Package deploy_test checks the deployment files (docker-compose.yml,
// deploy/) against fieldhub's code, and the external engines the
// deployments use (VictoriaMetrics, InfluxDB) against its store.
package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/internal/testkit/influxdtest"
	"github.com/fieldhub/fieldhub/internal/testkit/vmtest"
	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/store/influx"
	"github.com/fieldhub/fieldhub/telemetry"
)

// batch is what ingest would append: two devices, two metrics, a boolean
// as 0/1, ids with the characters device ids may hold.
func batch(base int64) []telemetry.Sample {
	var s []telemetry.Sample
	for i := int64(0); i < 20; i++ {
		s = append(s,
			telemetry.Sample{Device: "boiler-1", Metric: "temperature", TS: base + i*1000, Value: 20 + float64(i)/4},
			telemetry.Sample{Device: "meter.7:a_b", Metric: "temperature", TS: base + i*1000, Value: -float64(i)},
			telemetry.Sample{Device: "boiler-1", Metric: "door_open", TS: base + i*1000, Value: float64(i % 2)},
		)
	}
	return s
}

// vmSeries is one line of VictoriaMetrics' /api/v1/export.
type vmSeries struct {
	Metric     map[string]string `json:"metric"`
	Values     []float64         `json:"values"`
	Timestamps []int64           `json:"timestamps"`
}

// TestInfluxBackendWritesToVictoriaMetrics: store/influx's Append, pointed
// at a real VictoriaMetrics, lands every sample there; VictoriaMetrics
// names the series {measurement}_{field} (telemetry_temperature) with the
// device tag as a label, and, run with -dedup.minScrapeInterval=1ms as
// docs/deploy.md says, keeps a redelivered sample once. The server opens
// no listener but its HTTP one.
func TestInfluxBackendWritesToVictoriaMetrics(t *testing.T) {
	vm := vmtest.Start(t, "-dedup.minScrapeInterval=1ms")
	if got, want := vm.Listening(t), []string{"tcp:" + vm.Addr[strings.LastIndex(vm.Addr, ":")+1:]}; !slices.Equal(got, want) {
		t.Errorf("victoria-metrics listens on %v, want only %v", got, want)
	}
	st, err := influx.Open(context.Background(), influx.Options{URL: vm.URL, Bucket: "fieldhub", Org: "fieldhub"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	base := time.Now().Add(-time.Hour).Truncate(time.Second).UnixMilli()
	samples := batch(base)
	for range 2 { // a redelivered batch
		if err := st.Append(context.Background(), samples); err != nil {
			t.Fatal(err)
		}
	}

	var got []vmSeries
	deadline := time.Now().Add(30 * time.Second)
	for {
		q := url.Values{"match[]": {`{__name__=~"telemetry_.*"}`}, "start": {fmt.Sprint(base/1000 - 60)}}
		got = nil
		sc := bufio.NewScanner(bytes.NewReader(vm.Get(t, "/api/v1/export?"+q.Encode())))
		sc.Buffer(nil, 1<<20)
		n := 0
		for sc.Scan() {
			var s vmSeries
			if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
				t.Fatalf("export line %q: %v", sc.Bytes(), err)
			}
			got = append(got, s)
			n += len(s.Values)
		}
		if n >= len(samples) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	want := map[string]map[int64]float64{}
	for _, s := range samples {
		k := "telemetry_" + s.Metric + "|" + s.Device
		if want[k] == nil {
			want[k] = map[int64]float64{}
		}
		want[k][s.TS] = s.Value
	}
	if len(got) != len(want) {
		t.Fatalf("%d series exported, want %d: %+v", len(got), len(want), got)
	}
	for _, s := range got {
		k := s.Metric["__name__"] + "|" + s.Metric["device"]
		w, ok := want[k]
		if !ok {
			t.Errorf("unexpected series %v", s.Metric)
			continue
		}
		if len(s.Values) != len(w) {
			t.Errorf("%v: %d samples, want %d (each once)", s.Metric, len(s.Values), len(w))
		}
		for i, ts := range s.Timestamps {
			if v, ok := w[ts]; !ok || v != s.Values[i] {
				t.Errorf("%v: sample (%d, %v) not written", s.Metric, ts, s.Values[i])
			}
		}
		t.Logf("VictoriaMetrics series %v: %d samples", s.Metric, len(s.Values))
	}

	// And PromQL over it, as Grafana would read it.
	body := vm.Get(t, "/api/v1/query?"+url.Values{"query": {`max_over_time(telemetry_temperature{device="boiler-1"}[2h])`},
		"time": {fmt.Sprint(base/1000 + 60)}}.Encode())
	if !strings.Contains(string(body), `"24.75"`) {
		t.Errorf("PromQL over VictoriaMetrics: %s", body)
	}
}

// TestInfluxBackendWritesToInfluxd: the same batch, through the same
// Append, lands in a real influxd, read back through the store's query API.
func TestInfluxBackendWritesToInfluxd(t *testing.T) {
	ix := influxdtest.Start(t)
	st, err := influx.Open(context.Background(), influx.Options{URL: ix.URL, Token: ix.Token, Org: ix.Org, Bucket: ix.Bucket})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	base := time.Now().Add(-time.Hour).Truncate(time.Second).UnixMilli()
	samples := batch(base)
	for range 2 {
		if err := st.Append(context.Background(), samples); err != nil {
			t.Fatal(err)
		}
	}
	for _, dev := range []string{"boiler-1", "meter.7:a_b"} {
		pts, err := st.Series(context.Background(), store.SeriesQuery{Device: dev, Metric: "temperature", From: base, To: base + 60_000})
		if err != nil {
			t.Fatal(err)
		}
		var want []store.Point
		for _, s := range samples {
			if s.Device == dev && s.Metric == "temperature" {
				want = append(want, store.Point{TS: s.TS, Value: s.Value})
			}
		}
		if !slices.Equal(pts, want) {
			t.Errorf("%s: influxd holds %v, want %v", dev, pts, want)
		}
	}
}
