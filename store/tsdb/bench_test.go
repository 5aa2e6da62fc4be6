package tsdb

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/telemetry"
)

// BenchmarkAppend appends batches of 1,000 samples over 10,000 series
// (1,000 devices × 10 metrics), each series one sample per 10 batches, one
// second apart: an op is one batch.
func BenchmarkAppend(b *testing.B) {
	for _, mode := range []struct {
		name   string
		noSync bool
	}{{"fsync", false}, {"nosync", true}} {
		b.Run(mode.name, func(b *testing.B) {
			const (
				nSeries = 10_000
				batch   = 1_000
			)
			s := openStore(b, Options{NoSync: mode.noSync})
			devices := make([]string, nSeries/10)
			for i := range devices {
				devices[i] = fmt.Sprintf("dev%04d", i)
			}
			metrics := []string{"temperature", "humidity", "pressure", "co2", "battery", "rssi", "door_open", "fan_on", "uptime", "voltage"}
			base := time.Now().Add(-time.Hour).UnixMilli()
			samples := make([]telemetry.Sample, batch)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ts := base + int64(i/(nSeries/batch))*1000
				for j := range samples {
					k := (i*batch + j) % nSeries
					samples[j] = telemetry.Sample{Device: devices[k/10], Metric: metrics[k%10], TS: ts, Value: float64(i + j)}
				}
				if err := s.Append(ctx, samples); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "samples/s")
		})
	}
}

// BenchmarkSeriesBucketed reads one day of 10 s samples (8,640) of one
// series as 288 buckets of 5 minutes.
func BenchmarkSeriesBucketed(b *testing.B) {
	s := openStore(b, Options{NoSync: true})
	ctx := context.Background()
	end := time.Now().Add(-time.Minute).UnixMilli()
	start := end - 24*3600_000
	var batch []telemetry.Sample
	for ts := start; ts < end; ts += 10_000 {
		batch = append(batch, telemetry.Sample{Device: "d", Metric: "m", TS: ts, Value: float64(ts % 1000)})
		if len(batch) == 1000 {
			mustAppend(b, s, batch...)
			batch = batch[:0]
		}
	}
	mustAppend(b, s, batch...)
	q := store.SeriesQuery{Device: "d", Metric: "m", From: start, To: end, Step: 5 * time.Minute, Agg: store.AggAvg}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pts, err := s.Series(ctx, q)
		if err != nil || len(pts) != 288 {
			b.Fatal(len(pts), err)
		}
	}
}

func BenchmarkLatest(b *testing.B) {
	s := openStore(b, Options{NoSync: true})
	t0 := time.Now().Add(-time.Minute).UnixMilli()
	var batch []telemetry.Sample
	for m := range 10 {
		batch = append(batch, telemetry.Sample{Device: "d", Metric: fmt.Sprintf("m%d", m), TS: t0, Value: 1})
	}
	mustAppend(b, s, batch...)
	b.ReportAllocs()
	for b.Loop() {
		if l, _ := s.Latest(context.Background(), "d"); len(l) != 10 {
			b.Fatal(l)
		}
	}
}
