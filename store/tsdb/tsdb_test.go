package tsdb

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/telemetry"
)

func openStore(t testing.TB, opts Options) *Store {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	s, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func pt(ts int64, v float64) store.Point { return store.Point{TS: ts, Value: v} }

func smp(device, metric string, ts int64, v float64) telemetry.Sample {
	return telemetry.Sample{Device: device, Metric: metric, TS: ts, Value: v}
}

func mustAppend(t testing.TB, s *Store, samples ...telemetry.Sample) {
	t.Helper()
	if err := s.Append(context.Background(), samples); err != nil {
		t.Fatal(err)
	}
}

func query(t testing.TB, s *Store, q store.SeriesQuery) []store.Point {
	t.Helper()
	pts, err := s.Series(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	return pts
}

func raw(t testing.TB, s *Store, device, metric string) []store.Point {
	return query(t, s, store.SeriesQuery{Device: device, Metric: metric, From: 0, To: math.MaxInt64})
}

func checkPoints(t *testing.T, got []store.Point, want ...store.Point) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("points:\n got %v\nwant %v", got, want)
	}
}

// nowMS is a recent timestamp that leaves room on both sides of the
// accepted window; tests place samples relative to it.
func nowMS() int64 { return time.Now().Add(-time.Minute).UnixMilli() / 1000 * 1000 }

func TestAppendAndRawSeries(t *testing.T) {
	s := openStore(t, Options{})
	t0 := nowMS()
	mustAppend(t, s,
		smp("th-1", "temperature", t0, 21.5),
		smp("th-1", "humidity", t0, 40),
		smp("th-2", "temperature", t0, 18),
		smp("th-1", "temperature", t0+1000, 21.75),
		smp("th-1", "temperature", t0+2000, 22),
	)
	checkPoints(t, raw(t, s, "th-1", "temperature"), store.Point{TS: t0, Value: 21.5}, store.Point{TS: t0 + 1000, Value: 21.75}, store.Point{TS: t0 + 2000, Value: 22})
	checkPoints(t, raw(t, s, "th-2", "temperature"), store.Point{TS: t0, Value: 18})
	checkPoints(t, raw(t, s, "th-1", "humidity"), store.Point{TS: t0, Value: 40})
	checkPoints(t, raw(t, s, "th-3", "temperature"))
	// From and To are inclusive.
	checkPoints(t, query(t, s, store.SeriesQuery{Device: "th-1", Metric: "temperature", From: t0 + 1000, To: t0 + 2000}),
		store.Point{TS: t0 + 1000, Value: 21.75}, store.Point{TS: t0 + 2000, Value: 22})
	checkPoints(t, query(t, s, store.SeriesQuery{Device: "th-1", Metric: "temperature", From: t0 + 1, To: t0 + 1999}),
		store.Point{TS: t0 + 1000, Value: 21.75})
	// Metric names allowed by telemetry work as series names.
	mustAppend(t, s, smp("th-1", "urn:dev:ow:10e2073a01080063:temp.c-1", t0, 1))
	checkPoints(t, raw(t, s, "th-1", "urn:dev:ow:10e2073a01080063:temp.c-1"), store.Point{TS: t0, Value: 1})
}

func TestSeriesBucketed(t *testing.T) {
	s := openStore(t, Options{})
	from := nowMS() - 600_000
	// Buckets of 10 s from `from`: [0,10s) has 1,3,5; [10s,20s) has 7 and -2;
	// [20s,30s) is empty; [30s,40s) has 9 (at 35 s). Points outside
	// [from, to] must be ignored.
	mustAppend(t, s,
		smp("d", "m", from-1, 100),
		smp("d", "m", from, 1),
		smp("d", "m", from+4000, 3),
		smp("d", "m", from+9999, 5),
		smp("d", "m", from+10000, 7),
		smp("d", "m", from+15000, -2),
		smp("d", "m", from+35000, 9),
		smp("d", "m", from+35001, 100),
	)
	to := from + 35000
	tests := []struct {
		agg  store.Agg
		want []store.Point
	}{
		{store.AggAvg, []store.Point{pt(from, 3), pt(from+10000, 2.5), pt(from+30000, 9)}},
		{"", []store.Point{pt(from, 3), pt(from+10000, 2.5), pt(from+30000, 9)}},
		{store.AggMin, []store.Point{pt(from, 1), pt(from+10000, -2), pt(from+30000, 9)}},
		{store.AggMax, []store.Point{pt(from, 5), pt(from+10000, 7), pt(from+30000, 9)}},
		{store.AggLast, []store.Point{pt(from, 5), pt(from+10000, -2), pt(from+30000, 9)}},
	}
	for _, tt := range tests {
		t.Run("agg="+string(tt.agg), func(t *testing.T) {
			got := query(t, s, store.SeriesQuery{Device: "d", Metric: "m", From: from, To: to, Step: 10 * time.Second, Agg: tt.agg})
			checkPoints(t, got, tt.want...)
		})
	}
	// Buckets align to From, not to the epoch.
	got := query(t, s, store.SeriesQuery{Device: "d", Metric: "m", From: from + 5000, To: to, Step: 10 * time.Second, Agg: store.AggMax})
	checkPoints(t, got, store.Point{TS: from + 5000, Value: 7}, store.Point{TS: from + 15000, Value: -2}, store.Point{TS: from + 35000, Value: 9})
	// One bucket covering everything.
	got = query(t, s, store.SeriesQuery{Device: "d", Metric: "m", From: from, To: to, Step: time.Hour, Agg: store.AggAvg})
	checkPoints(t, got, store.Point{TS: from, Value: (1 + 3 + 5 + 7 - 2 + 9) / 6.0})
	// A step of 1ms is raw data stamped per millisecond.
	got = query(t, s, store.SeriesQuery{Device: "d", Metric: "m", From: from, To: from + 4000, Step: time.Millisecond, Agg: store.AggLast})
	checkPoints(t, got, store.Point{TS: from, Value: 1}, store.Point{TS: from + 4000, Value: 3})
}

func TestSeriesErrors(t *testing.T) {
	s := openStore(t, Options{})
	for _, tt := range []struct {
		q    store.SeriesQuery
		want string
	}{
		{store.SeriesQuery{Metric: "m", To: 1}, "series: device and metric are required"},
		{store.SeriesQuery{Device: "d", To: 1}, "series: device and metric are required"},
		{store.SeriesQuery{Device: "d", Metric: "m", From: 2, To: 1}, "series: to (1) is before from (2)"},
		{store.SeriesQuery{Device: "d", Metric: "m", To: 1, Step: -time.Second}, "series: step -1s must be 0 (raw) or at least 1ms"},
		{store.SeriesQuery{Device: "d", Metric: "m", To: 1, Step: time.Microsecond}, "series: step 1µs must be 0 (raw) or at least 1ms"},
		{store.SeriesQuery{Device: "d", Metric: "m", To: 1, Step: time.Second, Agg: "sum"}, `series: unknown aggregation "sum" (want avg, min, max or last)`},
	} {
		if _, err := s.Series(context.Background(), tt.q); err == nil || err.Error() != tt.want {
			t.Errorf("%+v: got %v, want %s", tt.q, err, tt.want)
		}
	}
}

func TestLatest(t *testing.T) {
	s := openStore(t, Options{})
	t0 := nowMS()
	mustAppend(t, s,
		smp("d1", "temp", t0, 1),
		smp("d1", "co2", t0+1000, 400),
		smp("d1", "temp", t0+2000, 3),
		smp("d1", "temp", t0+1000, 2), // older than the newest: not the latest
		smp("d2", "temp", t0, 9),
	)
	mustAppend(t, s, smp("d1", "temp", t0-5000, 0)) // out of order, later call
	got, err := s.Latest(context.Background(), "d1")
	if err != nil {
		t.Fatal(err)
	}
	want := []telemetry.Sample{smp("d1", "co2", t0+1000, 400), smp("d1", "temp", t0+2000, 3)}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if got, _ := s.Latest(context.Background(), "nobody"); len(got) != 0 {
		t.Fatalf("unknown device: %+v", got)
	}
}

func TestLatestAfterReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t0 := nowMS()
	mustAppend(t, s, smp("d1", "a", t0, 1), smp("d1", "b", t0, 2), smp("d1", "a", t0+1000, 3), smp("d2", "a", t0, 4))
	mustAppend(t, s, smp("d1", "a", t0-1000, 5)) // out of order: in the WBL
	want1, _ := s.Latest(context.Background(), "d1")
	want2, _ := s.Latest(context.Background(), "d2")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, Options{Dir: dir})
	got1, _ := s.Latest(context.Background(), "d1")
	got2, _ := s.Latest(context.Background(), "d2")
	if !reflect.DeepEqual(got1, want1) || !reflect.DeepEqual(got2, want2) || len(got1) != 2 {
		t.Fatalf("after reopen:\n got %+v %+v\nwant %+v %+v", got1, got2, want1, want2)
	}
	checkPoints(t, raw(t, s, "d1", "a"), store.Point{TS: t0 - 1000, Value: 5}, store.Point{TS: t0, Value: 1}, store.Point{TS: t0 + 1000, Value: 3})
}

// A series whose samples were all compacted out of the head into a block
// must keep its latest value across a restart.
func TestLatestFromBlocksAfterReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Add(-6 * time.Hour).UnixMilli()
	// "old" stops after an hour; "new" goes on for 5h, so the head spans
	// more than 1.5 block ranges and the first 2h become a block.
	for ts := t0; ts <= t0+5*3600_000; ts += 60_000 {
		batch := []telemetry.Sample{smp("d", "new", ts, float64(ts))}
		if ts <= t0+3600_000 {
			batch = append(batch, smp("d", "old", ts, float64(ts)))
		}
		mustAppend(t, s, batch...)
	}
	if err := s.DB().Compact(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(s.DB().Blocks()) == 0 {
		t.Fatal("no block was cut; the test does not test what it should")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, Options{Dir: dir})
	if hmin := s.DB().Head().MinTime(); hmin <= t0+3600_000 {
		t.Fatalf("head starts at %d, still holding the old series: the test does not test what it should", hmin)
	}
	got, _ := s.Latest(context.Background(), "d")
	want := []telemetry.Sample{smp("d", "new", t0+5*3600_000, float64(t0+5*3600_000)), smp("d", "old", t0+3600_000, float64(t0+3600_000))}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if n := len(raw(t, s, "d", "old")); n != 61 {
		t.Fatalf("old series has %d points after compaction, want 61", n)
	}
}

func TestOutOfOrderInsideWindow(t *testing.T) {
	s := openStore(t, Options{})
	t0 := nowMS()
	mustAppend(t, s, smp("d", "m", t0, 1), smp("x", "y", t0, 0))
	// 90 minutes older than the newest sample: inside the default 2h window.
	mustAppend(t, s, smp("d", "m", t0-90*60_000, 2), smp("d", "other", t0-100*60_000, 3))
	checkPoints(t, raw(t, s, "d", "m"), store.Point{TS: t0 - 90*60_000, Value: 2}, store.Point{TS: t0, Value: 1})
	checkPoints(t, raw(t, s, "d", "other"), store.Point{TS: t0 - 100*60_000, Value: 3})
}

func TestTooOld(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openStore(t, Options{Registerer: reg})
	t0 := nowMS()
	mustAppend(t, s, smp("d", "m", t0, 0))
	if got, want := s.MinValidTime(), t0-2*3600_000; got != want {
		t.Fatalf("MinValidTime = %d, want %d", got, want)
	}
	err := s.Append(context.Background(), []telemetry.Sample{
		smp("d", "m", t0-3*3600_000, 1), // too old
		smp("d", "m", t0-60_000, 2),
		smp("e", "m", t0-5*3600_000, 3), // too old, new series
		smp("d", "m", t0+1000, 4),
		smp("d", "m", t0-2*3600_000, 5), // exactly at the limit: accepted
	})
	var tooOld *store.TooOldError
	if !errors.As(err, &tooOld) || !errors.Is(err, store.ErrTooOld) {
		t.Fatalf("got %v, want a TooOldError", err)
	}
	if !reflect.DeepEqual(tooOld.Index, []int{0, 2}) || tooOld.MinTS != t0-2*3600_000 {
		t.Fatalf("TooOldError %+v", tooOld)
	}
	checkPoints(t, raw(t, s, "d", "m"), store.Point{TS: t0 - 2*3600_000, Value: 5}, store.Point{TS: t0 - 60_000, Value: 2}, store.Point{TS: t0, Value: 0}, store.Point{TS: t0 + 1000, Value: 4})
	checkPoints(t, raw(t, s, "e", "m"))
	if latest, _ := s.Latest(context.Background(), "e"); len(latest) != 0 {
		t.Fatalf("a refused sample became latest: %+v", latest)
	}
	if got := testutil.ToFloat64(s.metrics.tooOld); got != 2 {
		t.Fatalf("too old counter = %v", got)
	}
	if got := testutil.ToFloat64(s.metrics.appended); got != 4 {
		t.Fatalf("appended counter = %v", got)
	}
}

func TestTooNew(t *testing.T) {
	s := openStore(t, Options{})
	t0 := nowMS()
	mustAppend(t, s, smp("d", "m", t0, 0))
	future := time.Now().Add(time.Hour).UnixMilli()
	err := s.Append(context.Background(), []telemetry.Sample{
		smp("d", "m", t0-3*3600_000, 1),
		smp("d", "m", future, 2),
		smp("d", "m", t0+1000, 3),
	})
	var tooOld *store.TooOldError
	var tooNew *store.TooNewError
	if !errors.As(err, &tooOld) || !errors.As(err, &tooNew) || !errors.Is(err, store.ErrTooNew) {
		t.Fatalf("got %v, want TooOldError and TooNewError", err)
	}
	if !reflect.DeepEqual(tooOld.Index, []int{0}) || !reflect.DeepEqual(tooNew.Index, []int{1}) {
		t.Fatalf("indices: old %v new %v", tooOld.Index, tooNew.Index)
	}
	if tooNew.MaxTS < time.Now().UnixMilli() || tooNew.MaxTS > future {
		t.Fatalf("MaxTS %d", tooNew.MaxTS)
	}
	checkPoints(t, raw(t, s, "d", "m"), store.Point{TS: t0, Value: 0}, store.Point{TS: t0 + 1000, Value: 3})
	// The refused future sample did not move the window.
	if got := s.MinValidTime(); got != t0+1000-2*3600_000 {
		t.Fatalf("MinValidTime moved to %d", got)
	}
}

func TestDuplicates(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openStore(t, Options{Registerer: reg})
	dups := func() (same, different float64) {
		return testutil.ToFloat64(s.metrics.duplicates.WithLabelValues("same")), testutil.ToFloat64(s.metrics.duplicates.WithLabelValues("different"))
	}
	t0 := nowMS()
	p := func(ts int64, v float64) store.Point { return store.Point{TS: ts, Value: v} }

	// The newest sample again: in the TSDB's in-order path.
	mustAppend(t, s, smp("d", "m", t0, 1))
	mustAppend(t, s, smp("d", "m", t0, 1))
	checkPoints(t, raw(t, s, "d", "m"), p(t0, 1))
	mustAppend(t, s, smp("d", "m", t0, 2)) // different value: first kept
	checkPoints(t, raw(t, s, "d", "m"), p(t0, 1))
	if same, diff := dups(); same != 1 || diff != 1 {
		t.Fatalf("duplicates same=%v different=%v", same, diff)
	}

	// An older sample again (a redelivered reading): looked up in the store.
	mustAppend(t, s, smp("d", "m", t0+1000, 3), smp("d", "m", t0+2000, 4))
	mustAppend(t, s, smp("d", "m", t0+1000, 3), smp("d", "m", t0, 1))
	mustAppend(t, s, smp("d", "m", t0+1000, 99))
	checkPoints(t, raw(t, s, "d", "m"), p(t0, 1), p(t0+1000, 3), p(t0+2000, 4))
	if same, diff := dups(); same != 3 || diff != 2 {
		t.Fatalf("duplicates same=%v different=%v", same, diff)
	}

	// Out-of-order inserted samples again.
	mustAppend(t, s, smp("d", "m", t0-5000, 5))
	mustAppend(t, s, smp("d", "m", t0-5000, 5), smp("d", "m", t0-5000, 6))
	checkPoints(t, raw(t, s, "d", "m"), p(t0-5000, 5), p(t0, 1), p(t0+1000, 3), p(t0+2000, 4))

	// Duplicates inside one batch: newest, and older than the newest, and a
	// sample planned in order earlier in the batch then seen again.
	mustAppend(t, s,
		smp("e", "m", t0, 1), smp("e", "m", t0, 1), smp("e", "m", t0, 7), // same, different
		smp("e", "m", t0+3000, 2), smp("e", "m", t0+1000, 3), smp("e", "m", t0+1000, 3), smp("e", "m", t0+1000, 8),
		smp("e", "m", t0+4000, 4), smp("e", "m", t0+3000, 2),
	)
	checkPoints(t, raw(t, s, "e", "m"), p(t0, 1), p(t0+1000, 3), p(t0+3000, 2), p(t0+4000, 4))
	if same, diff := dups(); same != 7 || diff != 5 { // OOO section: +1 same +1 different; batch e: +3 same, +2 different
		t.Fatalf("duplicates same=%v different=%v", same, diff)
	}
	latest, _ := s.Latest(context.Background(), "e")
	if !reflect.DeepEqual(latest, []telemetry.Sample{smp("e", "m", t0+4000, 4)}) {
		t.Fatalf("latest %+v", latest)
	}
}

// Redelivery after a restart: the cache is rebuilt, older samples are
// looked up in the replayed head.
func TestDuplicatesAfterReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t0 := nowMS()
	batch := []telemetry.Sample{smp("d", "m", t0, 1), smp("d", "m", t0+1000, 2), smp("d", "m", t0+2000, 3)}
	mustAppend(t, s, batch...)
	s.Close()
	s = openStore(t, Options{Dir: dir})
	mustAppend(t, s, batch...)
	mustAppend(t, s, smp("d", "m", t0+1000, 20))
	checkPoints(t, raw(t, s, "d", "m"), store.Point{TS: t0, Value: 1}, store.Point{TS: t0 + 1000, Value: 2}, store.Point{TS: t0 + 2000, Value: 3})
}

func TestAppendRefusesEmptyLabels(t *testing.T) {
	s := openStore(t, Options{})
	t0 := nowMS()
	for _, batch := range [][]telemetry.Sample{
		{smp("d", "m", t0, 1), smp("", "m", t0, 1)},
		{smp("d", "", t0, 1)},
	} {
		if err := s.Append(context.Background(), batch); err == nil {
			t.Fatalf("%+v: no error", batch)
		}
	}
	checkPoints(t, raw(t, s, "d", "m")) // nothing of the batch was written
	if err := s.Append(context.Background(), nil); err != nil {
		t.Fatalf("empty batch: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Append(ctx, []telemetry.Sample{smp("d", "m", t0, 1)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestMinValidTimeEmpty(t *testing.T) {
	s := openStore(t, Options{OutOfOrderWindow: 3 * time.Hour})
	if got := s.MinValidTime(); got != math.MinInt64 {
		t.Fatalf("empty store: %d", got)
	}
	t0 := nowMS()
	mustAppend(t, s, smp("d", "m", t0, 1))
	if got := s.MinValidTime(); got != t0-3*3600_000 {
		t.Fatalf("got %d, want %d", got, t0-3*3600_000)
	}
}

func TestOpenOptions(t *testing.T) {
	for _, tt := range []struct {
		opts Options
		want string
	}{
		{Options{}, "open tsdb: Dir is empty"},
		{Options{Dir: t.TempDir(), Retention: -time.Hour}, "open tsdb: retention -1h0m0s is negative"},
		{Options{Dir: t.TempDir(), OutOfOrderWindow: 30 * time.Minute}, "open tsdb: out-of-order window 30m0s is below the minimum 1h0m0s"},
		{Options{Dir: t.TempDir(), MaxFuture: 2 * time.Hour}, "open tsdb: max future 2h0m0s must be positive and below the out-of-order window 2h0m0s"},
		{Options{Dir: t.TempDir(), MaxFuture: -time.Minute}, "open tsdb: max future -1m0s must be positive and below the out-of-order window 2h0m0s"},
	} {
		s, err := Open(tt.opts)
		if err == nil {
			s.Close()
		}
		if err == nil || err.Error() != tt.want {
			t.Errorf("%+v: got %v, want %s", tt.opts, err, tt.want)
		}
	}
}

func TestMetricsAndReopenWithSameRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	for i := range 2 {
		s, err := Open(Options{Dir: dir, Registerer: reg})
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		mustAppend(t, s, smp("d", "m", nowMS()+int64(i), 1))
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]bool{}
		for _, mf := range mfs {
			names[mf.GetName()] = true
		}
		for _, n := range []string{
			"fieldhub_tsdb_appended_samples_total", "fieldhub_tsdb_too_old_samples_total", "fieldhub_tsdb_duplicate_samples_total",
			"fieldhub_tsdb_append_duration_seconds", "fieldhub_tsdb_cached_series", "fieldhub_prometheus_tsdb_head_series",
		} {
			if !names[n] {
				t.Errorf("open %d: metric %s not registered", i, n)
			}
		}
		// A second store on the same registry is refused cleanly.
		if _, err := Open(Options{Dir: t.TempDir(), Registerer: reg}); err == nil {
			t.Fatal("second store with the same registry opened")
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSweepDropsSeriesPastRetention(t *testing.T) {
	s := openStore(t, Options{Retention: 2 * time.Hour})
	t0 := nowMS()
	mustAppend(t, s, smp("old", "m", t0, 1), smp("new", "m", t0, 1))
	later := time.UnixMilli(t0).Add(3 * time.Hour)
	s.appendMu.Lock()
	s.now = func() time.Time { return later }
	s.appendMu.Unlock()
	mustAppend(t, s, smp("new", "m", later.UnixMilli()-1000, 2))
	if got, _ := s.Latest(context.Background(), "old"); len(got) != 0 {
		t.Fatalf("series past retention still cached: %+v", got)
	}
	if got, _ := s.Latest(context.Background(), "new"); len(got) != 1 || got[0].Value != 2 {
		t.Fatalf("live series: %+v", got)
	}
	if n := s.seriesCount(); n != 1 {
		t.Fatalf("%d series cached", n)
	}
}

func TestConcurrentUse(t *testing.T) {
	s := openStore(t, Options{NoSync: true})
	t0 := nowMS()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			dev := fmt.Sprintf("d%d", w)
			for i := range 200 {
				if err := s.Append(context.Background(), []telemetry.Sample{smp(dev, "a", t0+int64(i), float64(i)), smp(dev, "b", t0+int64(i), 1)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			dev := fmt.Sprintf("d%d", w)
			for range 200 {
				if _, err := s.Latest(context.Background(), dev); err != nil {
					t.Error(err)
				}
				if _, err := s.Series(context.Background(), store.SeriesQuery{Device: dev, Metric: "a", From: t0, To: t0 + 1000, Step: 10 * time.Millisecond, Agg: store.AggMax}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	for w := range 4 {
		dev := fmt.Sprintf("d%d", w)
		if n := len(raw(t, s, dev, "a")); n != 200 {
			t.Fatalf("%s: %d points", dev, n)
		}
		latest, _ := s.Latest(context.Background(), dev)
		if len(latest) != 2 || latest[0].TS != t0+199 || latest[0].Value != 199 {
			t.Fatalf("%s latest %+v", dev, latest)
		}
	}
}

// Kill -9 durability. TestHelperProcess, run as a child process, appends
// batches and prints "committed k" after each Append returns; the parent
// SIGKILLs it mid-stream, reopens the directory and checks that every
// sample of every batch reported committed is there.
const (
	helperDirEnv    = "FIELDHUB_TSDB_HELPER_DIR"
	helperBaseEnv   = "FIELDHUB_TSDB_HELPER_BASE"
	helperNoSyncEnv = "FIELDHUB_TSDB_HELPER_NOSYNC"
	helperSeries    = 50
)

// helperBatch is batch k: one in-order sample for each of helperSeries
// series, and one out-of-order sample (going back in time) of series "ooo".
func helperBatch(k int, base int64) []telemetry.Sample {
	b := make([]telemetry.Sample, 0, helperSeries+1)
	for j := range helperSeries {
		b = append(b, smp(fmt.Sprintf("dev%02d", j), "m", base+int64(k), float64(k)))
	}
	return append(b, smp("ooo", "m", base-1-int64(k), float64(k)))
}

func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		t.Skip("child process of TestKill9Durability")
	}
	base, _ := strconv.ParseInt(os.Getenv(helperBaseEnv), 10, 64)
	s, err := Open(Options{Dir: dir, NoSync: os.Getenv(helperNoSyncEnv) == "1"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	mustAppend(t, s, smp("ooo", "m", base, -1)) // so "ooo" samples are out of order
	for k := range 100_000 {
		if err := s.Append(context.Background(), helperBatch(k, base)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Printf("committed %d\n", k)
	}
	time.Sleep(time.Minute) // the parent kills us long before
	os.Exit(3)
}

func TestKill9Durability(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	for _, mode := range []string{"fsync", "nosync"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			base := nowMS() - 10*60_000
			cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
			cmd.Env = append(os.Environ(), helperDirEnv+"="+dir, helperBaseEnv+"="+strconv.FormatInt(base, 10))
			if mode == "nosync" {
				cmd.Env = append(cmd.Env, helperNoSyncEnv+"=1")
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waited := false
			t.Cleanup(func() {
				if !waited {
					cmd.Process.Kill()
					cmd.Wait()
				}
			})
			killAt := 200
			if mode == "nosync" {
				killAt = 2000
			}
			timeout := time.AfterFunc(60*time.Second, func() { cmd.Process.Kill() })
			defer timeout.Stop()
			last, killed := -1, false
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				line := sc.Text()
				k, err := strconv.Atoi(strings.TrimPrefix(line, "committed "))
				if err != nil || !strings.HasPrefix(line, "committed ") {
					t.Logf("child: %s", line)
					continue
				}
				last = k
				if k >= killAt && !killed {
					killed = true
					if err := cmd.Process.Kill(); err != nil { // SIGKILL
						t.Fatal(err)
					}
				}
			}
			err = cmd.Wait()
			waited = true
			if !killed {
				t.Fatalf("child ended before %d commits (last %d): %v\n%s", killAt, last, err, stderr.String())
			}
			t.Logf("child killed after committing batch %d", last)

			s := openStore(t, Options{Dir: dir})
			for j := range helperSeries {
				pts := raw(t, s, fmt.Sprintf("dev%02d", j), "m")
				// Batch last+1 may have been committed without being reported.
				if len(pts) < last+1 || len(pts) > last+2 {
					t.Fatalf("dev%02d: %d points, want %d or %d", j, len(pts), last+1, last+2)
				}
				for k := 0; k <= last; k++ {
					if pts[k] != (store.Point{TS: base + int64(k), Value: float64(k)}) {
						t.Fatalf("dev%02d: point %d is %+v", j, k, pts[k])
					}
				}
			}
			pts := raw(t, s, "ooo", "m")
			if len(pts) < last+2 { // last+1 out-of-order samples and the first one
				t.Fatalf("ooo: %d points, want at least %d", len(pts), last+2)
			}
			got := map[int64]float64{}
			for _, p := range pts {
				got[p.TS] = p.Value
			}
			for k := 0; k <= last; k++ {
				if v, ok := got[base-1-int64(k)]; !ok || v != float64(k) {
					t.Fatalf("ooo: out-of-order sample of batch %d lost", k)
				}
			}
		})
	}
}
