package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/telemetry"
)

// gateStore is an Appender whose commits wait for the test to open a gate:
// a unit-test stand-in to observe how the pipeline batches. The real stores
// are exercised end to end in package hub.
type gateStore struct {
	mu      sync.Mutex
	calls   int
	samples []telemetry.Sample
	gate    chan struct{} // receive to let one Append through; nil = no gate
	entered chan int      // gets the batch size when an Append starts
	err     func(batch []telemetry.Sample) error
}

func (g *gateStore) Append(ctx context.Context, s []telemetry.Sample) error {
	if g.entered != nil {
		g.entered <- len(s)
	}
	if g.gate != nil {
		select {
		case <-g.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls++
	if g.err != nil {
		if err := g.err(s); err != nil {
			return err
		}
	}
	g.samples = append(g.samples, s...)
	return nil
}

func newPipeline(t *testing.T, st store.Appender, mut func(*Options)) (*Pipeline, *registry.Registry, *prometheus.Registry) {
	t.Helper()
	reg, err := registry.Open(context.Background(), filepath.Join(t.TempDir(), "registry.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	prom := prometheus.NewRegistry()
	opts := Options{Store: st, Registry: reg, Registerer: prom, MaxFuture: 5 * time.Minute}
	if mut != nil {
		mut(&opts)
	}
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		p.Stop(ctx)
	})
	return p, reg, prom
}

func payload(ts int64, v float64) []byte {
	return fmt.Appendf(nil, `{"ts": %d, "metrics": {"v": %g}}`, ts, v)
}

// TestGroupCommit: while one commit is in progress, every publisher that
// arrives joins the next batch, so N publishers need far fewer than N
// commits (here: exactly 2), and each returns only after its batch commits.
func TestGroupCommit(t *testing.T) {
	g := &gateStore{gate: make(chan struct{}), entered: make(chan int, 10)}
	p, _, _ := newPipeline(t, g, nil)
	now := time.Now()
	ctx := context.Background()

	// First publisher: its commit starts and is held at the gate.
	first := make(chan error, 1)
	go func() { first <- p.Ingest(ctx, "d0", payload(now.UnixMilli(), 0), 1, now) }()
	if n := <-g.entered; n != 1 {
		t.Fatalf("first batch has %d samples", n)
	}
	// 100 more arrive during that commit.
	const n = 100
	var returned atomic.Int32
	var wg sync.WaitGroup
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Ingest(ctx, fmt.Sprintf("d%d", i), payload(now.UnixMilli(), float64(i)), 1, now); err != nil {
				t.Errorf("ingest %d: %v", i, err)
			}
			returned.Add(1)
		}()
	}
	// Wait until all 100 are queued in the pending batch.
	deadline := time.Now().Add(20 * time.Second)
	for {
		p.mu.Lock()
		queued := len(p.cur.samples)
		p.mu.Unlock()
		if queued == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d queued", queued)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if returned.Load() != 0 {
		t.Fatal("a QoS 1 publisher returned before its batch was committed")
	}
	g.gate <- struct{}{} // commit 1 ends
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if got := <-g.entered; got != n {
		t.Fatalf("second batch has %d samples, want all %d waiting publishers", got, n)
	}
	g.gate <- struct{}{}
	wg.Wait()
	if g.calls != 2 || len(g.samples) != n+1 {
		t.Fatalf("%d commits for %d samples, want 2 commits for %d", g.calls, len(g.samples), n+1)
	}
}

// TestQoS0NeverWaits: QoS 0 returns while a commit is blocked, and beyond
// the queue bound readings are dropped and counted.
func TestQoS0NeverWaits(t *testing.T) {
	g := &gateStore{gate: make(chan struct{}), entered: make(chan int, 100)}
	p, _, _ := newPipeline(t, g, func(o *Options) { o.QoS0Queue = 10 })
	defer close(g.gate)
	now := time.Now()
	ingest := func(i int) {
		if err := p.Ingest(context.Background(), "q0", payload(now.UnixMilli()+int64(i), 1), 0, now); err != nil {
			t.Fatal(err)
		}
	}
	// The first reading's commit starts and is held at the gate ...
	ingest(0)
	if n := <-g.entered; n != 1 {
		t.Fatalf("first batch has %d samples", n)
	}
	// ... and QoS 0 publishers do not wait for it: 10 are queued behind
	// it, the other 14 dropped and counted.
	for i := 1; i < 25; i++ {
		ingest(i)
	}
	if got := testutil.ToFloat64(p.metrics.dropped.WithLabelValues("qos0_queue_full")); got != 14 {
		t.Fatalf("dropped = %v, want 14 of 24 with a queue of 10", got)
	}
}

func TestStoreFailureIsNotAcknowledged(t *testing.T) {
	g := &gateStore{err: func([]telemetry.Sample) error { return errors.New("disk on fire") }}
	p, _, _ := newPipeline(t, g, nil)
	now := time.Now()
	err := p.Ingest(context.Background(), "d1", payload(now.UnixMilli(), 1), 1, now)
	if err == nil || errors.Is(err, ErrRejected) {
		t.Fatalf("Ingest with a failing store = %v, want a plain error (no PUBACK)", err)
	}
	if got := testutil.ToFloat64(p.metrics.commitFailures); got != 1 {
		t.Fatalf("commit failures = %v", got)
	}
}

// TestStoreRefusedSamplesAreDeadLettered: a store that refuses some samples
// (too old, or refused for good) dead-letters their whole messages; the
// other messages of the batch are stored and acknowledged.
func TestStoreRefusedSamplesAreDeadLettered(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    func(idx []int) error
		reason string
	}{
		{"too old", func(idx []int) error { return &store.TooOldError{Index: idx, MinTS: 5} }, "too_old"},
		{"refused", func(idx []int) error { return &store.RejectedError{Index: idx, Reason: "field type conflict"} }, "store_refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &gateStore{gate: make(chan struct{}), entered: make(chan int, 10)}
			g.err = func(s []telemetry.Sample) error {
				var idx []int
				for i, x := range s {
					if x.Device == "bad" {
						idx = append(idx, i)
					}
				}
				if idx == nil {
					return nil
				}
				return tc.err(idx)
			}
			p, reg, _ := newPipeline(t, g, nil)
			now := time.Now()
			ctx := context.Background()
			// Hold a first commit so both messages land in one batch.
			go p.Ingest(ctx, "warm", payload(now.UnixMilli(), 0), 0, now)
			<-g.entered
			errs := make(chan error, 2)
			for _, dev := range []string{"good", "bad"} {
				go func() {
					errs <- p.Ingest(ctx, dev, []byte(`[{"metrics": {"a": 1}}, {"ts": 1, "metrics": {"b": 2}}]`), 1, now)
				}()
			}
			for {
				p.mu.Lock()
				n := len(p.cur.msgs)
				p.mu.Unlock()
				if n == 2 {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			close(g.gate)
			var rejected, ok int
			for range 2 {
				if err := <-errs; errors.Is(err, ErrRejected) {
					rejected++
				} else if err == nil {
					ok++
				} else {
					t.Fatal(err)
				}
			}
			if rejected != 1 || ok != 1 {
				t.Fatalf("rejected %d, ok %d; want 1 and 1", rejected, ok)
			}
			dls, err := reg.DeadLetters(ctx, registry.DeadLetterFilter{})
			if err != nil || len(dls) != 1 || dls[0].Device != "bad" || dls[0].Reason != tc.reason {
				t.Fatalf("dead letters = %+v, %v", dls, err)
			}
		})
	}
}

func TestStopCommitsPending(t *testing.T) {
	g := &gateStore{}
	p, _, _ := newPipeline(t, g, nil)
	now := time.Now()
	for i := range 50 {
		if err := p.Ingest(context.Background(), "s", payload(now.UnixMilli()+int64(i), 1), 0, now); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if len(g.samples) != 50 {
		t.Fatalf("%d of 50 QoS 0 samples committed at stop", len(g.samples))
	}
	if err := p.Ingest(context.Background(), "s", payload(now.UnixMilli(), 1), 1, now); err == nil {
		t.Fatal("Ingest after Stop succeeded")
	}
}

func TestValidationRejects(t *testing.T) {
	minTS := time.Now().Add(-time.Hour).UnixMilli()
	p, reg, _ := newPipeline(t, &gateStore{}, func(o *Options) {
		max := 10.0
		o.Types = map[string]*telemetry.DeviceType{"t": {Name: "t", UnknownMetrics: "reject", Metrics: map[string]telemetry.MetricSpec{"v": {Type: "number", Max: &max}}}}
		o.MinValidTime = func() int64 { return minTS }
	})
	ctx := context.Background()
	if _, _, err := reg.CreateDevice(ctx, registry.DeviceSpec{ID: "typed", Type: "t"}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, tc := range []struct{ payload, reason string }{
		{`nope`, "bad_payload"},
		{`{"metrics": {"v": true}}`, "wrong_type"},
		{`{"metrics": {"v": 11}}`, "out_of_range"},
		{`{"metrics": {"w": 1}}`, "unknown_metric"},
		{fmt.Sprintf(`{"ts": %d, "metrics": {"v": 1}}`, minTS-1), "too_old"},
		{fmt.Sprintf(`{"ts": %d, "metrics": {"v": 1}}`, now.Add(time.Hour).UnixMilli()), "too_new"},
	} {
		err := p.Ingest(ctx, "typed", []byte(tc.payload), 1, now)
		var rej *Rejection
		if !errors.As(err, &rej) || rej.Reason != tc.reason {
			t.Errorf("%s: err = %v, want reason %s", tc.payload, err, tc.reason)
		}
	}
	if err := p.Ingest(ctx, "typed", []byte(`{"metrics": {"v": 3}}`), 1, now); err != nil {
		t.Fatalf("valid reading: %v", err)
	}
}

func BenchmarkIngestQoS1Parallel(b *testing.B) {
	reg, err := registry.Open(context.Background(), filepath.Join(b.TempDir(), "r.db"), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	p, err := New(Options{Store: &gateStore{}, Registry: reg})
	if err != nil {
		b.Fatal(err)
	}
	p.Start()
	defer p.Stop(context.Background())
	pl := []byte(`{"seq": 1, "metrics": {"temperature": 21.5, "humidity": 40.1, "pressure": 1013.2, "co2": 415, "voc": 0.3, "pm25": 12, "pm10": 20, "noise": 38.5, "lux": 300, "battery": 97}}`)
	var dev atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(64)
	b.RunParallel(func(pb *testing.PB) {
		id := fmt.Sprintf("dev-%d", dev.Add(1))
		for pb.Next() {
			if err := p.Ingest(context.Background(), id, pl, 1, time.Now()); err != nil {
				b.Error(err)
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "readings/s")
}

// TestMaxAge: a reading older than MaxAge behind the hub's clock is too old
// even when the store (empty, idle) would take it.
func TestMaxAge(t *testing.T) {
	g := &gateStore{}
	p, _, _ := newPipeline(t, g, func(o *Options) {
		o.MaxAge = time.Hour
		o.MinValidTime = func() int64 { return math.MinInt64 } // an empty store takes anything
	})
	now := time.Now()
	err := p.Ingest(context.Background(), "d", payload(now.Add(-2*time.Hour).UnixMilli(), 1), 1, now)
	var rej *Rejection
	if !errors.As(err, &rej) || rej.Reason != "too_old" {
		t.Fatalf("a reading 2h old with MaxAge 1h: %v, want too_old", err)
	}
	if err := p.Ingest(context.Background(), "d", payload(now.Add(-30*time.Minute).UnixMilli(), 1), 1, now); err != nil {
		t.Fatalf("a reading 30m old: %v", err)
	}
}
