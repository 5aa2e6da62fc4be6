package influx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fieldhub/fieldhub/internal/testkit/influxdtest"
	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/telemetry"
)

// The store must satisfy the contract.
var _ store.Store = (*Store)(nil)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// open opens a store on srv with a fresh registry; mutate adjusts options.
func open(t testing.TB, srv *influxdtest.Server, mutate func(*Options)) (*Store, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts := Options{
		URL: srv.URL, Token: srv.Token, Org: srv.Org, Bucket: srv.Bucket,
		RetryBackoff: Backoff{Min: 20 * time.Millisecond, Max: 500 * time.Millisecond},
		Logger:       testLogger(t),
		Registerer:   reg,
		Measurement:  strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()),
	}
	if mutate != nil {
		mutate(&opts)
	}
	s, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, reg
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func series(t *testing.T, s *Store, q store.SeriesQuery) []store.Point {
	t.Helper()
	pts, err := s.Series(ctxT(t), q)
	if err != nil {
		t.Fatalf("Series(%+v): %v", q, err)
	}
	return pts
}

// TestSharedServer runs the tests that need influxd but do not stop it
// against one server (starting influxd takes seconds); each subtest writes
// to its own measurement.
func TestSharedServer(t *testing.T) {
	srv := influxdtest.Start(t)
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, *influxdtest.Server)
	}{
		{"AppendQuery", testAppendQuery},
		{"Duplicates", testDuplicates},
		{"HostileNames", testHostileNames},
		{"MissingBucket", testMissingBucket},
		{"FieldTypeConflict", testFieldTypeConflict},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, srv) })
	}
}

// testAppendQuery writes a known data set and checks Latest and Series,
// raw and bucketed with every aggregation, against hand-computed values.
func testAppendQuery(t *testing.T, srv *influxdtest.Server) {
	s, reg := open(t, srv, nil)
	ctx := ctxT(t)

	const b = int64(1_700_000_000_500) // From: deliberately not on a second boundary
	future := time.Now().Add(24 * time.Hour).UnixMilli()
	samples := []telemetry.Sample{
		{Device: "d1", Metric: "temp", TS: b - 1, Value: 99}, // before From
		{Device: "d1", Metric: "temp", TS: b + 0, Value: 10},
		{Device: "d1", Metric: "temp", TS: b + 400, Value: 20},
		{Device: "d1", Metric: "temp", TS: b + 900, Value: 15},
		{Device: "d1", Metric: "temp", TS: b + 1000, Value: 21}, // integral: must stay a float field
		{Device: "d1", Metric: "temp", TS: b + 1999, Value: -3.25},
		// bucket [b+2000, b+3000) is empty
		{Device: "d1", Metric: "temp", TS: b + 3500, Value: 7},
		{Device: "d1", Metric: "temp", TS: b + 4000, Value: 8},  // == To: included
		{Device: "d1", Metric: "temp", TS: b + 4001, Value: 50}, // after To
		{Device: "d1", Metric: "door_open", TS: b + 100, Value: 1},
		{Device: "d1", Metric: "door_open", TS: b + 200, Value: 0},
		{Device: "d1", Metric: "clock", TS: future, Value: 3}, // a device clock ahead
		{Device: "d2", Metric: "temp", TS: b + 500, Value: 1000},
	}
	if err := s.Append(ctx, samples); err != nil {
		t.Fatalf("Append: %v", err)
	}
	if got := testutil.ToFloat64(s.m.written); got != float64(len(samples)) {
		t.Errorf("points_written_total = %v, want %d", got, len(samples))
	}
	if got := testutil.ToFloat64(s.m.up); got != 1 {
		t.Errorf("up = %v", got)
	}
	if n, err := testutil.GatherAndCount(reg, "fieldhub_influx_write_duration_seconds"); err != nil || n != 1 {
		t.Errorf("duration histogram: %d, %v", n, err)
	}

	latest, err := s.Latest(ctx, "d1")
	if err != nil {
		t.Fatalf("Latest: %v", err)
	}
	wantLatest := []telemetry.Sample{
		{Device: "d1", Metric: "clock", TS: future, Value: 3},
		{Device: "d1", Metric: "door_open", TS: b + 200, Value: 0},
		{Device: "d1", Metric: "temp", TS: b + 4001, Value: 50},
	}
	if !reflect.DeepEqual(latest, wantLatest) {
		t.Errorf("Latest(d1) = %+v\nwant %+v", latest, wantLatest)
	}
	if got, err := s.Latest(ctx, "nobody"); err != nil || len(got) != 0 {
		t.Errorf("Latest(nobody) = %v, %v; want empty", got, err)
	}

	raw := series(t, s, store.SeriesQuery{Device: "d1", Metric: "temp", From: b, To: b + 4000})
	wantRaw := []store.Point{p(b, 10), p(b+400, 20), p(b+900, 15), p(b+1000, 21), p(b+1999, -3.25), p(b+3500, 7), p(b+4000, 8)}
	if !reflect.DeepEqual(raw, wantRaw) {
		t.Errorf("raw = %v\nwant %v", raw, wantRaw)
	}

	// Buckets of 1s aligned to From: [b, b+1000) {10,20,15}, [b+1000, b+2000)
	// {21,-3.25}, [b+2000, b+3000) empty, [b+3000, b+4000) {7}, [b+4000, ...] {8}.
	for _, tc := range []struct {
		agg  store.Agg
		want []store.Point
	}{
		{store.AggAvg, []store.Point{p(b, 15), p(b+1000, 8.875), p(b+3000, 7), p(b+4000, 8)}},
		{store.AggMin, []store.Point{p(b, 10), p(b+1000, -3.25), p(b+3000, 7), p(b+4000, 8)}},
		{store.AggMax, []store.Point{p(b, 20), p(b+1000, 21), p(b+3000, 7), p(b+4000, 8)}},
		{store.AggLast, []store.Point{p(b, 15), p(b+1000, -3.25), p(b+3000, 7), p(b+4000, 8)}},
		{"", []store.Point{p(b, 15), p(b+1000, 8.875), p(b+3000, 7), p(b+4000, 8)}}, // default avg
	} {
		got := series(t, s, store.SeriesQuery{Device: "d1", Metric: "temp", From: b, To: b + 4000, Step: time.Second, Agg: tc.agg})
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("agg %q: %v\nwant %v", tc.agg, got, tc.want)
		}
	}
	// One bucket over everything; a step that is not a divisor of the range.
	if got, want := series(t, s, store.SeriesQuery{Device: "d1", Metric: "temp", From: b, To: b + 4000, Step: time.Hour, Agg: store.AggMax}), []store.Point{p(b, 21)}; !reflect.DeepEqual(got, want) {
		t.Errorf("1h bucket: %v, want %v", got, want)
	}
	if got, want := series(t, s, store.SeriesQuery{Device: "d1", Metric: "temp", From: b + 400, To: b + 2000, Step: 700 * time.Millisecond, Agg: store.AggLast}),
		[]store.Point{p(b+400, 21), p(b+1800, -3.25)}; !reflect.DeepEqual(got, want) {
		t.Errorf("700ms buckets: %v, want %v", got, want)
	}
	if got := series(t, s, store.SeriesQuery{Device: "d1", Metric: "nothing", From: b, To: b + 4000}); len(got) != 0 {
		t.Errorf("unknown metric: %v", got)
	}
	if _, err := s.Series(ctx, store.SeriesQuery{Device: "d1", Metric: "temp", From: 5, To: 4}); err == nil {
		t.Error("Series with To < From: no error")
	}

	// The field is a float: an integer written by hand conflicts.
	if code, body := srv.WriteLP(t, fmt.Sprintf("%s,device=d9 temp=1i %d", s.opts.Measurement, b)); code != 400 || !strings.Contains(body, "already exists as type float") {
		t.Errorf("integer into temp: %d %s; want a conflict with a float field", code, body)
	}
}

// testDuplicates proves (device, metric, ts) is the identity: the same
// sample twice, in one batch or two, is stored once, the later value winning.
func testDuplicates(t *testing.T, srv *influxdtest.Server) {
	s, _ := open(t, srv, nil)
	ctx := ctxT(t)
	x := telemetry.Sample{Device: "d1", Metric: "temp", TS: 1_700_000_000_000, Value: 1.5}
	for range 2 {
		if err := s.Append(ctx, []telemetry.Sample{x, x}); err != nil {
			t.Fatal(err)
		}
	}
	if got := series(t, s, store.SeriesQuery{Device: "d1", Metric: "temp", From: 0, To: x.TS + 1}); !reflect.DeepEqual(got, []store.Point{p(x.TS, 1.5)}) {
		t.Errorf("after 4 writes of one sample: %v", got)
	}
	y := x
	y.Value = 2.5
	if err := s.Append(ctx, []telemetry.Sample{y}); err != nil {
		t.Fatal(err)
	}
	if got := series(t, s, store.SeriesQuery{Device: "d1", Metric: "temp", From: 0, To: x.TS + 1}); !reflect.DeepEqual(got, []store.Point{p(x.TS, 2.5)}) {
		t.Errorf("after rewriting with a new value: %v", got)
	}
}

// testHostileNames proves names with quotes, spaces, commas, '=', '$' and
// non-ASCII round-trip, that hostile query arguments cannot inject Flux, and
// that names line protocol cannot carry are refused, not mangled.
func testHostileNames(t *testing.T, srv *influxdtest.Server) {
	s, reg := open(t, srv, nil)
	ctx := ctxT(t)
	const ts = 1_700_000_000_000
	weird := `we"ird ${r.x}, =näme"`
	in := []telemetry.Sample{
		{Device: "d1", Metric: weird, TS: ts, Value: 1},
		{Device: "d1", Metric: "ok", TS: ts, Value: 2},
		{Device: `d"2 x,y=z`, Metric: "ok", TS: ts, Value: 3},
		{Device: "d1", Metric: `back\slash`, TS: ts, Value: 4},   // refused
		{Device: "d1", Metric: "nan", TS: ts, Value: math.NaN()}, // refused
		{Device: "d1", Metric: "time", TS: ts, Value: 5},         // refused
	}
	err := s.Append(ctx, in)
	var rej *store.RejectedError
	if !errors.As(err, &rej) || !errors.Is(err, store.ErrRejected) {
		t.Fatalf("Append: %v, want a *store.RejectedError", err)
	}
	if !reflect.DeepEqual(rej.Index, []int{3, 4, 5}) {
		t.Errorf("refused %v, want [3 4 5] (%v)", rej.Index, err)
	}
	if got := testutil.ToFloat64(s.m.rejected.WithLabelValues(reasonInvalid)); got != 3 {
		t.Errorf("points_rejected_total{reason=invalid} = %v", got)
	}
	if n, _ := testutil.GatherAndCount(reg, "fieldhub_influx_points_rejected_total"); n != 2 {
		t.Errorf("rejected series: %d", n)
	}

	if got := series(t, s, store.SeriesQuery{Device: "d1", Metric: weird, From: ts, To: ts}); !reflect.DeepEqual(got, []store.Point{p(ts, 1)}) {
		t.Errorf("Series(weird metric) = %v", got)
	}
	latest, err := s.Latest(ctx, `d"2 x,y=z`)
	if err != nil || len(latest) != 1 || latest[0].Value != 3 {
		t.Errorf("Latest(weird device) = %v, %v", latest, err)
	}
	latest, err = s.Latest(ctx, "d1")
	if err != nil || len(latest) != 2 || latest[0].Metric != "ok" || latest[1].Metric != weird {
		t.Errorf("Latest(d1) = %+v, %v", latest, err)
	}

	// Attempts to break out of the string literal find nothing (and do
	// not fail): each is taken as a literal device or metric name.
	for _, hostile := range []string{
		`x" or r.device != "`,
		`x" or true or "`,
		`\") |> drop(columns: ["device"]) //`,
		`x\`,
		`${r.device}`,
		"x\" or\nr.device != \"",
	} {
		if got, err := s.Latest(ctx, hostile); err != nil || len(got) != 0 {
			t.Errorf("Latest(%q) = %v, %v; want nothing", hostile, got, err)
		}
		if got, err := s.Series(ctx, store.SeriesQuery{Device: hostile, Metric: hostile, From: 0, To: ts, Step: time.Hour}); err != nil || len(got) != 0 {
			t.Errorf("Series(%q) = %v, %v; want nothing", hostile, got, err)
		}
		if got, err := s.Series(ctx, store.SeriesQuery{Device: "d1", Metric: hostile, From: 0, To: ts}); err != nil || len(got) != 0 {
			t.Errorf("Series(d1, %q) = %v, %v; want nothing", hostile, got, err)
		}
	}
}

// TestOutage proves the back-pressure policy: while influxd is down, Append
// blocks and retries; a cancelled context ends it with an error; after the
// restart every blocked Append returns nil and every sample is stored.
func TestOutage(t *testing.T) {
	srv := influxdtest.Start(t)
	s, _ := open(t, srv, nil)
	ctx := ctxT(t)

	batch := func(g, i int) []telemetry.Sample {
		var out []telemetry.Sample
		for k := range 10 {
			out = append(out, telemetry.Sample{Device: fmt.Sprintf("dev-%d", g), Metric: "v", TS: int64(1_700_000_000_000 + i*100 + k), Value: float64(i*100 + k)})
		}
		return out
	}
	if err := s.Append(ctx, batch(0, 0)); err != nil {
		t.Fatalf("Append before the outage: %v", err)
	}

	srv.Stop(t)

	// A cancelled context ends a blocked Append with the context's error.
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := s.Append(cctx, batch(9, 0))
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append during outage with a short context: %v, want DeadlineExceeded", err)
	}
	t.Logf("cancelled Append: %v", err)
	if testutil.ToFloat64(s.m.up) != 0 {
		t.Error("up = 1 during the outage")
	}

	// Blocked appends from several goroutines, as from several ingest commits.
	const writers, perWriter = 4, 3
	var wg sync.WaitGroup
	errs := make(chan error, writers*perWriter)
	var returned sync.Map
	for g := 1; g <= writers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				err := s.Append(ctx, batch(g, i))
				returned.Store(fmt.Sprint(g, i), time.Now())
				errs <- err
			}
		}()
	}
	// Wait until each writer has failed and retried a few times.
	waitFor(t, 30*time.Second, "retries during the outage", func() bool {
		return testutil.ToFloat64(s.m.retries) >= 3*writers
	})
	n := 0
	returned.Range(func(_, _ any) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d Appends returned while influxd was down", n)
	}
	conn := testutil.ToFloat64(s.m.failures.WithLabelValues(kindConnection))
	if conn == 0 {
		t.Errorf("no connection failures counted during the outage")
	}

	srv.Restart(t)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Append across the outage: %v", err)
		}
	}
	for g := 1; g <= writers; g++ {
		pts := series(t, s, store.SeriesQuery{Device: fmt.Sprintf("dev-%d", g), Metric: "v", From: 0, To: 1_800_000_000_000})
		if len(pts) != perWriter*10 {
			t.Errorf("dev-%d: %d points stored, want %d", g, len(pts), perWriter*10)
		}
	}
	if got := series(t, s, store.SeriesQuery{Device: "dev-0", Metric: "v", From: 0, To: 1_800_000_000_000}); len(got) != 10 {
		t.Errorf("data from before the outage: %d points", len(got))
	}
	if testutil.ToFloat64(s.m.up) != 1 {
		t.Error("up = 0 after the outage")
	}
	t.Logf("failures{connection}=%v retries=%v written=%v",
		testutil.ToFloat64(s.m.failures.WithLabelValues(kindConnection)), testutil.ToFloat64(s.m.retries), testutil.ToFloat64(s.m.written))
}

// TestHungServer proves a server that accepts but does not answer costs one
// WriteTimeout per attempt, is counted as a timeout and retried, and the
// write lands once it answers again.
func TestHungServer(t *testing.T) {
	srv := influxdtest.Start(t)
	s, _ := open(t, srv, func(o *Options) { o.WriteTimeout = 300 * time.Millisecond })
	srv.Pause(t)
	done := make(chan error, 1)
	go func() { done <- s.Append(ctxT(t), []telemetry.Sample{{Device: "d1", Metric: "a", TS: 1, Value: 1}}) }()
	waitFor(t, 30*time.Second, "two timeouts", func() bool {
		return testutil.ToFloat64(s.m.failures.WithLabelValues(kindTimeout)) >= 2
	})
	select {
	case err := <-done:
		t.Fatalf("Append returned while the server hung: %v", err)
	default:
	}
	srv.Resume(t)
	if err := <-done; err != nil {
		t.Fatalf("Append: %v", err)
	}
	if got := series(t, s, store.SeriesQuery{Device: "d1", Metric: "a", From: 0, To: 10}); len(got) != 1 {
		t.Errorf("stored %v", got)
	}
}

// testMissingBucket proves a 404 (missing bucket; likewise a wrong token)
// is treated as the hub's misconfiguration, not the samples' fault: Append
// keeps retrying (nothing acknowledged, nothing dead-lettered) until the
// caller gives up, and the store reports itself down.
func testMissingBucket(t *testing.T, srv *influxdtest.Server) {
	s, _ := open(t, srv, func(o *Options) {
		o.Bucket = "nope/autogen"
		o.RetryBackoff = Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	})
	in := []telemetry.Sample{{Device: "d1", Metric: "a", TS: 1, Value: 1}, {Device: "d1", Metric: "b", TS: 1, Value: 2}}
	ctx, cancel := context.WithTimeout(ctxT(t), 500*time.Millisecond)
	defer cancel()
	err := s.Append(ctx, in)
	var rej *store.RejectedError
	if errors.As(err, &rej) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append to a missing bucket: %v, want retries until the context ends", err)
	}
	if got := testutil.ToFloat64(s.m.retries); got < 1 {
		t.Errorf("retries = %v, want some", got)
	}
	if got := testutil.ToFloat64(s.m.failures.WithLabelValues(kindConfig)); got < 1 {
		t.Errorf("failures{config} = %v, want some", got)
	}
	if got := testutil.ToFloat64(s.m.up); got != 0 {
		t.Errorf("up = %v, want 0 while misconfigured", got)
	}
}

// testFieldTypeConflict proves a field type conflict (an integer field
// written by someone else) refuses exactly the samples of that metric, and
// the rest of the batch is stored.
func testFieldTypeConflict(t *testing.T, srv *influxdtest.Server) {
	s, _ := open(t, srv, nil)
	const ts = int64(1_700_000_000_000)
	for _, line := range []string{"count=5i", "level=1i"} {
		if code, body := srv.WriteLP(t, fmt.Sprintf("%s,device=other %s %d", s.opts.Measurement, line, ts)); code != 204 {
			t.Fatalf("hand write: %d %s", code, body)
		}
	}
	in := []telemetry.Sample{
		{Device: "d1", Metric: "temp", TS: ts, Value: 1},
		{Device: "d1", Metric: "count", TS: ts, Value: 2},
		{Device: "d1", Metric: "temp", TS: ts + 1, Value: 3},
		{Device: "d1", Metric: "level", TS: ts + 1, Value: 4},
		{Device: "d1", Metric: "count", TS: ts + 1, Value: 5},
		{Device: "d1", Metric: "hum", TS: ts + 1, Value: 6},
	}
	err := s.Append(ctxT(t), in)
	var rej *store.RejectedError
	if !errors.As(err, &rej) {
		t.Fatalf("Append: %v, want *store.RejectedError", err)
	}
	t.Logf("error: %v", err)
	if !reflect.DeepEqual(rej.Index, []int{1, 3, 4}) || !strings.Contains(err.Error(), "field type conflict") {
		t.Errorf("refused %v, want [1 3 4] with the reason (%v)", rej.Index, err)
	}
	if got := testutil.ToFloat64(s.m.retries); got != 0 {
		t.Errorf("retries = %v, want 0", got)
	}
	for metric, want := range map[string]int{"temp": 2, "hum": 1, "count": 0, "level": 0} {
		if got := series(t, s, store.SeriesQuery{Device: "d1", Metric: metric, From: ts, To: ts + 1}); len(got) != want {
			t.Errorf("%s: %d points stored, want %d", metric, len(got), want)
		}
	}
	// Reading the foreign integer field works (as a float).
	if got, err := s.Latest(ctxT(t), "other"); err != nil || len(got) != 2 || got[0].Metric != "count" || got[0].Value != 5 {
		t.Errorf("Latest(other) = %v, %v", got, err)
	}
}

// TestOpenWhileDown proves the hub can start while InfluxDB is down, and
// that the first write lands once it is up.
func TestOpenWhileDown(t *testing.T) {
	srv := influxdtest.Start(t)
	srv.Stop(t)
	s, _ := open(t, srv, nil)
	if got := testutil.ToFloat64(s.m.up); got != 0 {
		t.Errorf("up = %v with influxd down", got)
	}
	done := make(chan error, 1)
	go func() { done <- s.Append(ctxT(t), []telemetry.Sample{{Device: "d1", Metric: "a", TS: 1, Value: 1}}) }()
	waitFor(t, 30*time.Second, "a failed attempt", func() bool { return testutil.ToFloat64(s.m.retries) > 0 })
	srv.Restart(t)
	if err := <-done; err != nil {
		t.Fatalf("Append: %v", err)
	}
	if got := series(t, s, store.SeriesQuery{Device: "d1", Metric: "a", From: 0, To: 10}); len(got) != 1 {
		t.Errorf("stored %v", got)
	}
}

// TestCloseStopsRetries proves Close ends an Append that is retrying.
func TestCloseStopsRetries(t *testing.T) {
	srv := influxdtest.Start(t)
	srv.Stop(t)
	s, _ := open(t, srv, nil)
	done := make(chan error, 1)
	go func() { done <- s.Append(ctxT(t), []telemetry.Sample{{Device: "d1", Metric: "a", TS: 1, Value: 1}}) }()
	waitFor(t, 30*time.Second, "a failed attempt", func() bool { return testutil.ToFloat64(s.m.retries) > 0 })
	s.Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "closed") {
			t.Errorf("Append after Close: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Append still blocked after Close")
	}
}

func TestOpenOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string // substring of the error; "" for success
	}{
		{"ok", Options{URL: "http://127.0.0.1:1", Bucket: "b"}, ""},
		{"no url", Options{Bucket: "b"}, "url: required"},
		{"bad scheme", Options{URL: "tcp://x:1", Bucket: "b"}, "want http(s)"},
		{"no bucket", Options{URL: "http://x:1"}, "bucket: required"},
		{"bad measurement", Options{URL: "http://x:1", Bucket: "b", Measurement: `a\b`}, "measurement"},
		{"negative timeout", Options{URL: "http://x:1", Bucket: "b", WriteTimeout: -1}, "write timeout"},
		{"backoff order", Options{URL: "http://x:1", Bucket: "b", RetryBackoff: Backoff{Min: time.Second, Max: time.Millisecond}}, "exceeds max"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Registerer = prometheus.NewRegistry()
			s, err := Open(context.Background(), tc.opts)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if s.opts.Measurement != DefaultMeasurement || s.opts.WriteTimeout != DefaultWriteTimeout || s.opts.RetryBackoff.Min != DefaultBackoffMin {
					t.Errorf("defaults not applied: %+v", s.opts)
				}
				s.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func p(ts int64, v float64) store.Point { return store.Point{TS: ts, Value: v} }

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// BenchmarkAppend writes batches of 1,000 samples (100 devices × 10
// metrics at one instant) to a real influxd.
func BenchmarkAppend(b *testing.B) {
	srv := influxdtest.Start(b)
	s, _ := open(b, srv, func(o *Options) { o.Logger = slog.New(slog.DiscardHandler) })
	ctx := context.Background()
	const size = 1000
	batch := make([]telemetry.Sample, size)
	for k := range batch {
		batch[k] = telemetry.Sample{Device: fmt.Sprintf("dev-%03d", k/10), Metric: fmt.Sprintf("m%d", k%10)}
	}
	ts := int64(1_700_000_000_000)
	n := 0
	for b.Loop() {
		for k := range batch {
			batch[k].TS = ts + int64(n)
			batch[k].Value = float64(n + k)
		}
		if err := s.Append(ctx, batch); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(n*size)/b.Elapsed().Seconds(), "samples/s")
}
