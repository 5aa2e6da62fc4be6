// Package tsdb is fieldhub's embedded time-series store, built on the
// Prometheus TSDB (github.com/prometheus/prometheus/tsdb).
//
// # Series
//
// Each (device, metric) pair is one series with two labels:
// __name__ = the metric name and device = the device id. telemetry's metric
// names ([A-Za-z0-9][A-Za-z0-9_.:-]*) are valid Prometheus 3 metric names;
// names with '.' or '-' or a leading digit need PromQL's quoted form, e.g.
// {"temp.c", device="th-1"}.
//
// # Durability
//
// Append returns after the samples' WAL records were written. In detail
// (tsdb v0.316.0): the head appender's Commit calls wlog.WL.Log for each
// record (series, samples), and Log ends by writing the current 32 KiB
// page to the segment file with write(2), an *os.File without user-space
// buffering ("If it's the final record of the batch ... flush it", wlog.go).
// So when Commit returns the records are in the kernel's page cache and
// survive a kill -9 of fieldhub (TestKill9Durability). They are NOT fsynced:
// wlog fsyncs a segment only when it is full (asynchronously, on rotation)
// and on Close, so a power loss or kernel crash could lose acknowledged
// samples, up to the kernel's dirty writeback delay (30 s by default). So
// after every commit this package fsyncs the active WAL and WBL segments
// (and any segment the commit rotated past) unless Options.NoSync is set;
// with it Append honours store.Appender's "synced to disk". Out-of-order
// samples are logged in the WAL by Commit and again in the WBL right after,
// within the same Commit call; a WBL write error there is only logged by the
// TSDB (head_append.go), a gap this package cannot close.
//
// # Duplicates
//
// A sample is identified by (device, metric, ts). Appending a stored sample
// again with the same value is a no-op; with a different value the first one
// is kept and the new one counted in fieldhub_tsdb_duplicate_samples_total
// {value="different"}; neither is an error. The TSDB itself only detects a
// duplicate of a series' newest sample, so for samples older than that
// (redelivered readings) the store looks the timestamp up first.
//
// # Too old, too new
//
// The TSDB accepts a sample when it is at most the out-of-order window older
// than the newest sample of any series in the head (see MinValidTime). Older
// samples are refused and reported by *store.TooOldError; the rest of the
// batch is written. Since that limit follows the newest sample of any device,
// one device with its clock in the future would make every other device's
// samples too old; samples more than Options.MaxFuture ahead of the clock are
// therefore refused too (*store.TooNewError).
package tsdb

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/util/compression"

	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Label names of a series.
const (
	LabelMetric = labels.MetricName // "__name__"
	LabelDevice = "device"
)

// Defaults and bounds of Options.
const (
	DefaultRetention        = 30 * 24 * time.Hour
	DefaultOutOfOrderWindow = 2 * time.Hour
	// MinOutOfOrderWindow: the head accepts in-order samples down to half
	// its 2h chunk range behind its newest sample anyway, so a smaller window
	// would only make MinValidTime inexact.
	MinOutOfOrderWindow = time.Hour
	DefaultMaxFuture    = 10 * time.Minute
)

// Options configure Open.
type Options struct {
	// Dir holds the TSDB (blocks, wal, wbl). Required.
	Dir string
	// Retention is how long samples are kept; 0 means DefaultRetention.
	// The TSDB deletes whole blocks, so data lives up to one block longer.
	Retention time.Duration
	// OutOfOrderWindow is how much older than the newest sample in the store a
	// sample may be and still be accepted (devices buffering while offline);
	// 0 means DefaultOutOfOrderWindow, else at least MinOutOfOrderWindow.
	OutOfOrderWindow time.Duration
	// MaxFuture is how far ahead of the clock a sample may be; 0 means
	// DefaultMaxFuture. It must be below OutOfOrderWindow, so that one
	// device's fast clock cannot make the others' samples too old.
	MaxFuture time.Duration
	// NoSync skips the fsync of the WAL after each commit: Append then
	// survives a crash of the process but not of the machine.
	NoSync bool
	// Logger receives the TSDB's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives fieldhub_tsdb_* metrics and the TSDB's own, which
	// are prefixed fieldhub_ (fieldhub_prometheus_tsdb_head_series, …); nil
	// registers nothing. Close unregisters them.
	Registerer prometheus.Registerer
}

// Store is the embedded time-series store; it implements store.Store.
type Store struct {
	db        *tsdb.DB
	retention time.Duration
	oooWindow int64 // ms
	maxFuture int64 // ms
	logger    *slog.Logger
	metrics   *metrics
	reg       *trackingRegisterer
	now       func() time.Time // tests replace it

	// appendMu serializes Append (and Close): it guards the WAL syncers, the
	// per-call scratch and the writable fields of series. Callers batch.
	appendMu  sync.Mutex
	closed    bool
	sync      []*walSyncer
	scratch   appendScratch
	gen       uint64
	nextID    uint64
	lastSweep time.Time

	// mu guards devices and the latest value of every series. Writers hold
	// appendMu too, so Append may read them without mu.
	mu      sync.RWMutex
	devices map[string]map[string]*series // device → metric → series
}

// series caches a series' labels and TSDB reference, so appends need not
// rebuild labels, and its newest sample (Latest, duplicate detection).
type series struct {
	device, metric string
	lset           labels.Labels
	id             uint64            // creation order, to sort by series
	ref            storage.SeriesRef // 0 until the first append; head refs are never reused
	// Newest committed sample; has is false until one is.
	has bool
	ts  int64
	v   float64
	// Scratch of the Append in progress (gen == Store.gen).
	gen   uint64
	pTS   int64   // newest ts planned in this batch
	pV    float64 // its value
	pIdx  int     // its index in the batch
	dirty bool    // this batch appended to the series; cTS, cV is its newest
	cTS   int64
	cV    float64
}

// Open opens (creating if needed) the store in opts.Dir, replays its WAL and
// rebuilds the latest value of every series.
func Open(opts Options) (*Store, error) {
	if opts.Dir == "" {
		return nil, errors.New("open tsdb: Dir is empty")
	}
	if opts.Retention == 0 {
		opts.Retention = DefaultRetention
	}
	if opts.OutOfOrderWindow == 0 {
		opts.OutOfOrderWindow = DefaultOutOfOrderWindow
	}
	if opts.MaxFuture == 0 {
		opts.MaxFuture = DefaultMaxFuture
	}
	switch {
	case opts.Retention < 0:
		return nil, fmt.Errorf("open tsdb: retention %s is negative", opts.Retention)
	case opts.OutOfOrderWindow < MinOutOfOrderWindow:
		return nil, fmt.Errorf("open tsdb: out-of-order window %s is below the minimum %s", opts.OutOfOrderWindow, MinOutOfOrderWindow)
	case opts.MaxFuture < 0 || opts.MaxFuture >= opts.OutOfOrderWindow:
		return nil, fmt.Errorf("open tsdb: max future %s must be positive and below the out-of-order window %s", opts.MaxFuture, opts.OutOfOrderWindow)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	reg := &trackingRegisterer{inner: opts.Registerer}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("open tsdb: %w", err)
	}

	to := tsdb.DefaultOptions()
	to.RetentionDuration = opts.Retention.Milliseconds()
	to.OutOfOrderTimeWindow = opts.OutOfOrderWindow.Milliseconds()
	// Like Prometheus: blocks grow up to a tenth of the retention (at most
	// 31 days), so retention deletes in reasonably small steps.
	to.MaxBlockDuration = min(max(opts.Retention/10, 2*time.Hour), 31*24*time.Hour).Milliseconds()
	to.WALCompression = compression.Snappy // Prometheus' default: less written to SD cards

	var tsdbReg prometheus.Registerer
	if opts.Registerer != nil {
		tsdbReg = prometheus.WrapRegistererWithPrefix("fieldhub_", reg)
	}
	db, err := tsdb.Open(opts.Dir, logger, tsdbReg, to, nil)
	if err != nil {
		reg.unregisterAll()
		return nil, fmt.Errorf("open tsdb %s: %w", opts.Dir, err)
	}
	s := &Store{
		db:        db,
		retention: opts.Retention,
		oooWindow: opts.OutOfOrderWindow.Milliseconds(),
		maxFuture: opts.MaxFuture.Milliseconds(),
		logger:    logger,
		metrics:   m,
		reg:       reg,
		now:       time.Now,
		devices:   make(map[string]map[string]*series),
	}
	if !opts.NoSync {
		s.sync = []*walSyncer{newWALSyncer(opts.Dir, "wal"), newWALSyncer(opts.Dir, "wbl")}
	}
	s.lastSweep = s.now()
	if err := s.loadLatest(); err != nil {
		_ = db.Close()
		reg.unregisterAll()
		return nil, fmt.Errorf("open tsdb %s: %w", opts.Dir, err)
	}
	m.series.Set(float64(s.seriesCount()))
	return s, nil
}

// DB exposes the underlying TSDB, e.g. for a PromQL engine.
func (s *Store) DB() *tsdb.DB { return s.db }

// MinValidTime is the oldest timestamp (unix ms) an Append would accept now:
// the out-of-order window before the newest sample in the head, of any
// series. On an empty store it is math.MinInt64.
func (s *Store) MinValidTime() int64 {
	h := s.db.Head()
	if h.MinTime() == math.MaxInt64 { // head not initialized: no sample yet
		return math.MinInt64
	}
	return h.MaxTime() - s.oooWindow
}

// MaxValidTime is the newest timestamp (unix ms) an Append would accept now.
func (s *Store) MaxValidTime() int64 { return s.now().UnixMilli() + s.maxFuture }

// Sample fates in an Append.
const (
	actAppend   uint8 = iota // new: append
	actSame                  // already stored, or earlier in the batch, with the same value
	actConflict              // already stored, or earlier in the batch, with another value
	actCheck                 // older than the series' newest: look it up
	actTooOld
	actTooNew
)

type appendScratch struct {
	act    []uint8
	ser    []*series
	dupOf  []int // for actSame/actConflict: index of the batch sample it duplicates, or -1
	checks []int
	dirty  []*series
}

// Append writes samples and returns once they are committed to the WAL
// (and, unless Options.NoSync, fsynced). Samples outside the accepted time
// range are not written and reported, by index, in a *store.TooOldError or
// *store.TooNewError (both, joined, if need be); the others are committed.
// Duplicates are not errors (see the package doc).
func (s *Store) Append(ctx context.Context, samples []telemetry.Sample) (err error) {
	if len(samples) == 0 {
		return nil
	}
	for i := range samples {
		if samples[i].Device == "" || samples[i].Metric == "" {
			return fmt.Errorf("append: sample %d has an empty device or metric", i)
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("append: %w", err)
	}
	start := time.Now()
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	if s.closed {
		return errors.New("append: store is closed")
	}
	defer func() {
		s.metrics.appendDuration.Observe(time.Since(start).Seconds())
		if err != nil && !errors.Is(err, store.ErrTooOld) && !errors.Is(err, store.ErrTooNew) {
			s.metrics.appendFailures.Inc()
		}
	}()

	s.gen++
	gen := s.gen
	now := s.now()
	s.maybeSweep(now)
	minValid, maxValid := s.MinValidTime(), now.UnixMilli()+s.maxFuture
	sc := &s.scratch
	n := len(samples)
	sc.act = slices.Grow(sc.act[:0], n)[:n]
	sc.ser = slices.Grow(sc.ser[:0], n)[:n]
	sc.dupOf = slices.Grow(sc.dupOf[:0], n)[:n]
	sc.checks = sc.checks[:0]
	sc.dirty = sc.dirty[:0]
	defer clear(sc.ser) // don't pin series swept later

	// Plan: resolve each sample's series and decide its fate from what the
	// cache knows: the series' newest committed sample and the newest one
	// planned earlier in this batch.
	var (
		lastDevice string
		metricsOf  map[string]*series
	)
	for i := range samples {
		smp := &samples[i]
		sc.dupOf[i] = -1
		if smp.TS < minValid {
			sc.act[i] = actTooOld
			continue
		}
		if smp.TS > maxValid {
			sc.act[i] = actTooNew
			continue
		}
		if metricsOf == nil || smp.Device != lastDevice {
			lastDevice, metricsOf = smp.Device, s.devices[smp.Device]
		}
		e := metricsOf[smp.Metric]
		if e == nil {
			e = s.newSeries(smp.Device, smp.Metric)
			metricsOf = s.devices[smp.Device]
		}
		sc.ser[i] = e
		if e.gen != gen {
			e.gen, e.dirty = gen, false
			if e.has {
				e.pTS, e.pV, e.pIdx = e.ts, e.v, -1
			} else {
				e.pTS, e.pIdx = math.MinInt64, -1
			}
		}
		switch {
		case smp.TS > e.pTS:
			sc.act[i] = actAppend
			e.pTS, e.pV, e.pIdx = smp.TS, smp.Value, i
		case smp.TS == e.pTS:
			sc.act[i] = sameOrConflict(smp.Value, e.pV)
			sc.dupOf[i] = e.pIdx
		default:
			sc.act[i] = actCheck
			sc.checks = append(sc.checks, i)
		}
	}
	if len(sc.checks) > 0 {
		if err := s.resolveChecks(ctx, samples); err != nil {
			return fmt.Errorf("append: %w", err)
		}
	}

	// Write.
	app := s.db.AppenderV2(ctx)
	appended := 0
	for i := range samples {
		if sc.act[i] != actAppend {
			continue
		}
		smp, e := &samples[i], sc.ser[i]
		ref, err := app.Append(e.ref, e.lset, 0, smp.TS, smp.Value, nil, nil, storage.AOptions{})
		switch {
		case err == nil:
			e.ref = ref
			appended++
			if !e.dirty || smp.TS > e.cTS {
				if !e.dirty {
					e.dirty = true
					sc.dirty = append(sc.dirty, e)
				}
				e.cTS, e.cV = smp.TS, smp.Value
			}
		case errors.Is(err, storage.ErrTooOldSample), errors.Is(err, storage.ErrOutOfBounds), errors.Is(err, storage.ErrOutOfOrderSample):
			// Only on an empty head, where the first sample sets the window.
			sc.act[i] = actTooOld
		case errors.Is(err, storage.ErrDuplicateSampleForTimestamp):
			// Not expected (planned above), but the TSDB knows best.
			sc.act[i] = actConflict
		default:
			_ = app.Rollback()
			return fmt.Errorf("append sample %d (%s %s): %w", i, smp.Device, smp.Metric, err)
		}
	}
	if err := app.Commit(); err != nil {
		return fmt.Errorf("append: commit: %w", err)
	}
	for _, w := range s.sync {
		if err := w.sync(); err != nil {
			return fmt.Errorf("append: %w", err)
		}
	}

	// Publish the new latest values.
	if len(sc.dirty) > 0 {
		s.mu.Lock()
		for _, e := range sc.dirty {
			if !e.has || e.cTS > e.ts {
				e.has, e.ts, e.v = true, e.cTS, e.cV
			}
		}
		s.mu.Unlock()
	}

	// Account, and report refused samples by index.
	var tooOld, tooNew []int
	var same, conflict int
	for i, a := range sc.act {
		if (a == actSame || a == actConflict) && sc.dupOf[i] >= 0 && sc.act[sc.dupOf[i]] == actTooOld {
			a = actTooOld // duplicate of a batch sample the TSDB refused
		}
		switch a {
		case actSame:
			same++
		case actConflict:
			conflict++
		case actTooOld:
			tooOld = append(tooOld, i)
		case actTooNew:
			tooNew = append(tooNew, i)
		}
	}
	s.metrics.appended.Add(float64(appended))
	s.metrics.duplicates.WithLabelValues("same").Add(float64(same))
	s.metrics.duplicates.WithLabelValues("different").Add(float64(conflict))
	s.metrics.tooOld.Add(float64(len(tooOld)))
	s.metrics.tooNew.Add(float64(len(tooNew)))
	var errs []error
	if len(tooOld) > 0 {
		if minValid == math.MinInt64 {
			minValid = s.MinValidTime()
		}
		errs = append(errs, &store.TooOldError{Index: tooOld, MinTS: minValid})
	}
	if len(tooNew) > 0 {
		errs = append(errs, &store.TooNewError{Index: tooNew, MaxTS: maxValid})
	}
	return errors.Join(errs...)
}

func sameOrConflict(a, b float64) uint8 {
	if math.Float64bits(a) == math.Float64bits(b) {
		return actSame
	}
	return actConflict
}

// resolveChecks decides the samples that are older than their series'
// newest: a duplicate if the store or an earlier sample of the batch has
// the timestamp, else an out-of-order append.
func (s *Store) resolveChecks(ctx context.Context, samples []telemetry.Sample) error {
	sc := &s.scratch
	type key struct {
		e  *series
		ts int64
	}
	planned := make(map[key]int) // index of the batch sample planned for (series, ts)
	for i, a := range sc.act {
		if a == actAppend {
			planned[key{sc.ser[i], samples[i].TS}] = i
		}
	}
	checks := sc.checks
	slices.SortFunc(checks, func(a, b int) int {
		return cmp.Or(cmp.Compare(sc.ser[a].id, sc.ser[b].id), cmp.Compare(samples[a].TS, samples[b].TS), cmp.Compare(a, b))
	})
	mint, maxt := int64(math.MaxInt64), int64(math.MinInt64)
	for _, i := range checks {
		mint, maxt = min(mint, samples[i].TS), max(maxt, samples[i].TS)
	}
	q, err := s.db.Querier(mint, maxt)
	if err != nil {
		return fmt.Errorf("look up older samples: %w", err)
	}
	defer q.Close()
	var it chunkenc.Iterator
	for g := 0; g < len(checks); {
		e := sc.ser[checks[g]]
		end := g
		for end < len(checks) && sc.ser[checks[end]] == e {
			end++
		}
		group := checks[g:end]
		g = end
		// The stored samples of this series at the group's timestamps.
		stored := make(map[int64]float64)
		ss := q.Select(ctx, false, &storage.SelectHints{Start: samples[group[0]].TS, End: samples[group[len(group)-1]].TS},
			labels.MustNewMatcher(labels.MatchEqual, LabelMetric, e.metric),
			labels.MustNewMatcher(labels.MatchEqual, LabelDevice, e.device))
		for ss.Next() {
			it = ss.At().Iterator(it)
			for _, i := range group {
				ts := samples[i].TS
				if it.Seek(ts) == chunkenc.ValFloat {
					if t, v := it.At(); t == ts {
						stored[ts] = v
					}
				}
			}
			if err := it.Err(); err != nil {
				return fmt.Errorf("look up older samples of %s %s: %w", e.device, e.metric, err)
			}
		}
		if err := ss.Err(); err != nil {
			return fmt.Errorf("look up older samples of %s %s: %w", e.device, e.metric, err)
		}
		for _, i := range group {
			smp := &samples[i]
			if v, ok := stored[smp.TS]; ok {
				sc.act[i] = sameOrConflict(smp.Value, v)
				continue
			}
			if j, ok := planned[key{e, smp.TS}]; ok {
				sc.act[i] = sameOrConflict(smp.Value, samples[j].Value)
				sc.dupOf[i] = j
				continue
			}
			sc.act[i] = actAppend
			planned[key{e, smp.TS}] = i
		}
	}
	return nil
}

// newSeries adds a series to the cache. Its strings are cloned: callers'
// samples may share one backing string per payload (telemetry.Decode).
func (s *Store) newSeries(device, metric string) *series {
	device, metric = strings.Clone(device), strings.Clone(metric)
	s.nextID++
	e := &series{
		device: device,
		metric: metric,
		lset:   labels.FromStrings(LabelMetric, metric, LabelDevice, device),
		id:     s.nextID,
	}
	s.mu.Lock()
	ms := s.devices[device]
	if ms == nil {
		ms = make(map[string]*series)
		s.devices[device] = ms
	}
	ms[metric] = e
	s.mu.Unlock()
	s.metrics.series.Inc()
	return e
}

// sweepEvery is how often Append drops cache entries of series whose newest
// sample is past retention (their data is gone or going), which bounds the
// cache by the series written within the retention.
const sweepEvery = time.Hour

func (s *Store) maybeSweep(now time.Time) {
	if now.Sub(s.lastSweep) < sweepEvery {
		return
	}
	s.lastSweep = now
	cutoff := now.Add(-s.retention).UnixMilli()
	s.mu.Lock()
	for device, ms := range s.devices {
		for metric, e := range ms {
			// Entries without a committed sample only held labels for
			// refused samples; they are cheap to rebuild.
			if !e.has || e.ts < cutoff {
				delete(ms, metric)
			}
		}
		if len(ms) == 0 {
			delete(s.devices, device)
		}
	}
	n := s.seriesCountLocked()
	s.mu.Unlock()
	s.metrics.series.Set(float64(n))
}

func (s *Store) seriesCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.seriesCountLocked()
}

func (s *Store) seriesCountLocked() int {
	n := 0
	for _, ms := range s.devices {
		n += len(ms)
	}
	return n
}

// loadLatest rebuilds the cache with the newest sample of every series in
// the store, blocks included (a device silent since the last compaction
// still has a latest value). It decodes only each series' newest chunks.
func (s *Store) loadLatest() error {
	q, err := s.db.ChunkQuerier(math.MinInt64, math.MaxInt64)
	if err != nil {
		return fmt.Errorf("load latest values: %w", err)
	}
	defer q.Close()
	ss := q.Select(context.Background(), false, nil, labels.MustNewMatcher(labels.MatchRegexp, LabelDevice, ".+"))
	for ss.Next() {
		cs := ss.At()
		lset := cs.Labels()
		// Strings of a block's index may live in mmapped memory that is gone
		// after the querier closes: clone them.
		device, metric := strings.Clone(lset.Get(LabelDevice)), strings.Clone(lset.Get(LabelMetric))
		if metric == "" {
			continue
		}
		var (
			bestT = int64(math.MinInt64)
			bestV float64
			found bool
		)
		cit := cs.Iterator(nil)
		var metas []chunkMeta
		for cit.Next() {
			m := cit.At()
			metas = append(metas, chunkMeta{m.MinTime, m.MaxTime, m.Chunk})
		}
		if err := cit.Err(); err != nil {
			return fmt.Errorf("load latest of %s %s: %w", device, metric, err)
		}
		maxT := int64(math.MinInt64)
		for _, m := range metas {
			maxT = max(maxT, m.maxT)
		}
		for _, m := range metas {
			if m.maxT != maxT || m.chunk == nil {
				continue
			}
			it := m.chunk.Iterator(nil)
			for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
				if vt != chunkenc.ValFloat {
					continue
				}
				if t, v := it.At(); t >= bestT {
					bestT, bestV, found = t, v, true
				}
			}
			if err := it.Err(); err != nil {
				return fmt.Errorf("load latest of %s %s: %w", device, metric, err)
			}
		}
		if !found {
			continue
		}
		e := s.newSeries(device, metric)
		e.has, e.ts, e.v = true, bestT, bestV
	}
	if err := ss.Err(); err != nil {
		return fmt.Errorf("load latest values: %w", err)
	}
	return nil
}

type chunkMeta struct {
	minT, maxT int64
	chunk      chunkenc.Chunk
}

// Latest returns the newest sample of each metric of the device, sorted by
// metric name. It reads memory only.
func (s *Store) Latest(_ context.Context, device string) ([]telemetry.Sample, error) {
	s.mu.RLock()
	ms := s.devices[device]
	out := make([]telemetry.Sample, 0, len(ms))
	for _, e := range ms {
		if e.has {
			out = append(out, telemetry.Sample{Device: e.device, Metric: e.metric, TS: e.ts, Value: e.v})
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b telemetry.Sample) int { return strings.Compare(a.Metric, b.Metric) })
	return out, nil
}

// Series returns the raw or bucketed points of one metric of one device
// (see store.SeriesQuery), read with a TSDB querier.
func (s *Store) Series(ctx context.Context, sq store.SeriesQuery) ([]store.Point, error) {
	if sq.Device == "" || sq.Metric == "" {
		return nil, errors.New("series: device and metric are required")
	}
	if sq.To < sq.From {
		return nil, fmt.Errorf("series: to (%d) is before from (%d)", sq.To, sq.From)
	}
	if sq.Step < 0 || (sq.Step > 0 && sq.Step < time.Millisecond) {
		return nil, fmt.Errorf("series: step %s must be 0 (raw) or at least 1ms", sq.Step)
	}
	step := sq.Step.Milliseconds()
	agg := sq.Agg
	if step > 0 {
		var err error
		if agg, err = store.ParseAgg(string(sq.Agg)); err != nil {
			return nil, fmt.Errorf("series: %w", err)
		}
	}
	q, err := s.db.Querier(sq.From, sq.To)
	if err != nil {
		return nil, fmt.Errorf("series: %w", err)
	}
	defer q.Close()
	ss := q.Select(ctx, false, &storage.SelectHints{Start: sq.From, End: sq.To, Step: step, Func: string(agg)},
		labels.MustNewMatcher(labels.MatchEqual, LabelMetric, sq.Metric),
		labels.MustNewMatcher(labels.MatchEqual, LabelDevice, sq.Device))
	var (
		points []store.Point
		b      bucket
		it     chunkenc.Iterator
	)
	for ss.Next() { // one series at most: both labels are matched exactly
		it = ss.At().Iterator(it)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			if vt != chunkenc.ValFloat {
				continue
			}
			t, v := it.At()
			if t < sq.From || t > sq.To {
				continue
			}
			if step == 0 {
				points = append(points, store.Point{TS: t, Value: v})
				continue
			}
			start := sq.From + (t-sq.From)/step*step
			if b.n > 0 && start != b.start {
				points = append(points, b.point(agg))
				b = bucket{}
			}
			b.add(start, v)
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("series: %w", err)
		}
	}
	if err := ss.Err(); err != nil {
		return nil, fmt.Errorf("series: %w", err)
	}
	if b.n > 0 {
		points = append(points, b.point(agg))
	}
	return points, nil
}

// bucket reduces the samples of one Step.
type bucket struct {
	start         int64
	n             int
	sum, min, max float64
	last          float64
}

func (b *bucket) add(start int64, v float64) {
	if b.n == 0 {
		b.start, b.min, b.max = start, v, v
	}
	b.n++
	b.sum += v
	b.min, b.max = min(b.min, v), max(b.max, v)
	b.last = v // samples come in time order
}

func (b *bucket) point(agg store.Agg) store.Point {
	p := store.Point{TS: b.start}
	switch agg {
	case store.AggMin:
		p.Value = b.min
	case store.AggMax:
		p.Value = b.max
	case store.AggLast:
		p.Value = b.last
	default:
		p.Value = b.sum / float64(b.n)
	}
	return p
}

// Close flushes the WAL, closes the TSDB and unregisters the metrics.
func (s *Store) Close() error {
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	for _, w := range s.sync {
		errs = append(errs, w.close())
	}
	if err := s.db.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close tsdb: %w", err))
	}
	s.reg.unregisterAll()
	return errors.Join(errs...)
}

var _ store.Store = (*Store)(nil)
