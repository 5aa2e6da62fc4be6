package dashboard

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// BenchmarkPublishSamples measures what the live view adds to each ingest
// commit: a batch of 4,000 samples from 1,000 devices, with nobody
// watching, with a browser on one device's page, and with a subscriber of
// every reading (drained by a goroutine).
func BenchmarkPublishSamples(b *testing.B) {
	batch := make([]telemetry.Sample, 0, 4000)
	for d := range 1000 {
		for m := range 4 {
			batch = append(batch, telemetry.Sample{Device: fmt.Sprintf("dev-%04d", d), Metric: fmt.Sprintf("m%d", m), TS: int64(d), Value: float64(m)})
		}
	}
	run := func(b *testing.B, e *Events) {
		b.ReportAllocs()
		for b.Loop() {
			e.PublishSamples(batch)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/sample")
	}
	b.Run("nobody", func(b *testing.B) { run(b, NewEvents(256)) })
	b.Run("one-device", func(b *testing.B) {
		e := NewEvents(1 << 20)
		s, _ := e.Subscribe(EventFilter{Device: "dev-0500"})
		go func() {
			for range s.C {
			}
		}()
		defer e.Close()
		run(b, e)
		if s.Dropped() {
			b.Fatal("the subscriber was dropped: the benchmark measured nothing")
		}
	})
	b.Run("all-readings", func(b *testing.B) {
		e := NewEvents(1 << 20)
		s, _ := e.Subscribe(EventFilter{Types: []string{EventReading}})
		go func() {
			for range s.C {
			}
		}()
		defer e.Close()
		run(b, e)
		if s.Dropped() {
			b.Fatal("the subscriber was dropped: the benchmark measured nothing")
		}
	})
}

// BenchmarkDeviceList10k measures GET /api/v1/devices over HTTP with 10,000
// registered devices and reports p50 and p99 per query. Run with
// -benchtime 200x for 200 requests per query.
func BenchmarkDeviceList10k(b *testing.B) {
	f := newFixture(b, fixtureOpts{})
	ctx := context.Background()
	for i := range 10_000 {
		typ := []string{"thermostat", "door", "meter", "gateway"}[i%4]
		labels := map[string]string{"site": fmt.Sprintf("site-%02d", i%20), "floor": fmt.Sprint(i % 7)}
		if _, _, err := f.reg.CreateDevice(ctx, registry.DeviceSpec{ID: fmt.Sprintf("dev-%05d", i), Type: typ, Labels: labels}); err != nil {
			b.Fatal(err)
		}
		if i%3 == 0 {
			f.reg.SetPresence(ctx, fmt.Sprintf("dev-%05d", i), true, time.Now())
		}
	}
	// Some latest values for ?latest=true.
	for i := range 1000 {
		f.ingest(fmt.Sprintf("dev-%05d", i), `{"metrics": {"temperature": 21.5, "humidity": 40}}`)
	}
	for _, q := range []string{
		"limit=100",
		"limit=100&after=dev-05000",
		"limit=100&latest=true",
		"limit=1000",
		"limit=100&type=door",
		"limit=100&online=true",
		"limit=100&label=site=site-07",
		"limit=100&label=site=site-07&label=floor=3",
		"limit=100&search=99",
	} {
		b.Run(q, func(b *testing.B) {
			var lat []time.Duration
			for b.Loop() {
				start := time.Now()
				req, _ := http.NewRequest("GET", f.srv.URL+"/api/v1/devices?"+q, nil)
				req.Header.Set("Authorization", "Bearer "+f.token)
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					b.Fatalf("%s: %d", q, res.StatusCode)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
