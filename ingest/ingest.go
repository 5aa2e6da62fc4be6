// Package ingest takes a device's published telemetry to a committed batch:
// decode, validate, batch with other devices' readings, group-commit to the
// time-series store, and keep what is rejected as a dead letter.
//
// Ingest is called on the publishing client's own goroutine, from the
// broker's OnPublish hook, before the broker writes the PUBACK. For QoS 1 it
// blocks until the batch holding the reading is committed: a PUBACK means
// stored. QoS 0 never waits. One committer goroutine commits whatever is
// pending as soon as the previous commit ends, so under load thousands of
// publishers share each commit and under light load nothing waits on a timer.
package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/store"
	"github.com/fieldhub/fieldhub/telemetry"
)

// ErrRejected marks a message that was invalid. It was kept as a dead letter
// (when the error is returned for QoS 1, the dead letter is committed).
var ErrRejected = errors.New("rejected")

// Rejection says why a message was rejected. It wraps ErrRejected.
type Rejection struct {
	Reason string // short code: bad_payload, wrong_type, out_of_range, unknown_metric, too_old, too_new, store_refused
	Detail string // human-readable, names the field or metric
}

func (r *Rejection) Error() string { return r.Reason + ": " + r.Detail }
func (r *Rejection) Unwrap() error { return ErrRejected }

// Registry is what ingest needs of the device registry.
type Registry interface {
	Device(ctx context.Context, id string) (registry.Device, error)
	AddEvents(ctx context.Context, events []telemetry.Event) error
	AddDeadLetters(ctx context.Context, dls []registry.DeadLetter) error
	DeadLetter(ctx context.Context, id int64) (registry.DeadLetter, error)
	MarkReplayed(ctx context.Context, id int64, at time.Time, replayErr string) error
}

// Options configure a Pipeline. Store, Registry and Types are required.
type Options struct {
	Store    store.Appender
	Registry Registry
	// Types are the configured device types by name; devices of an unknown
	// or empty type get telemetry.DefaultType().
	Types map[string]*telemetry.DeviceType
	// MinValidTime, if set, gives the oldest timestamp (unix ms) the store
	// accepts now; older readings are rejected as too_old up front.
	MinValidTime func() int64
	// MaxAge, if set, rejects readings older than this behind the hub's
	// clock as too_old, whatever the store would take at the moment: the
	// embedded store's out-of-order window, so the rule does not depend on
	// what other devices happened to send.
	MaxAge time.Duration
	// MaxFuture rejects readings stamped further ahead of the hub's clock.
	MaxFuture time.Duration
	// QoS0Queue bounds the QoS 0 samples waiting for a commit; beyond it new
	// QoS 0 readings are dropped and counted. 0 means 50,000.
	QoS0Queue int
	// Publish sends a rejection report to the device (devices/{id}/errors).
	// It must not block. Optional.
	Publish func(topic string, payload []byte) error
	// OnCommit, if set, is called by the committer after each successful
	// commit with the committed samples (for live views). It must not block
	// or keep the slice.
	OnCommit func(samples []telemetry.Sample)
	// OnReject, if set, is called once a rejected message's dead letter is
	// committed (for live views). It must not block.
	OnReject   func(dl registry.DeadLetter)
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Now        func() time.Time
}

// Pipeline is the ingest path. Ingest is safe for concurrent use.
type Pipeline struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics
	types   *typeCache

	mu        sync.Mutex
	cur       *batch
	qos0Count int // QoS 0 samples in cur

	kick   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed bool
}

// batch is what one commit writes.
type batch struct {
	samples []telemetry.Sample
	events  []telemetry.Event
	dead    []registry.DeadLetter
	msgs    []*msg
	done    chan struct{}
	err     error // set before done is closed
}

// msg is one message's share of a batch.
type msg struct {
	device     string
	payload    []byte
	received   time.Time
	start, end int   // its samples in batch.samples
	rejected   error // *Rejection when the store refused it at commit time
}

func newBatch() *batch { return &batch{done: make(chan struct{})} }

func (b *batch) empty() bool {
	return len(b.samples) == 0 && len(b.events) == 0 && len(b.dead) == 0
}

// New builds a pipeline; Start starts its committer.
func New(opts Options) (*Pipeline, error) {
	if opts.Store == nil || opts.Registry == nil {
		return nil, errors.New("ingest: Store and Registry are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.QoS0Queue == 0 {
		opts.QoS0Queue = 50000
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("ingest metrics: %w", err)
	}
	p := &Pipeline{
		opts:    opts,
		log:     opts.Logger,
		metrics: m,
		types:   newTypeCache(opts.Registry, opts.Types),
		cur:     newBatch(),
		kick:    make(chan struct{}, 1),
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p, nil
}

// Start starts the committer goroutine. Stop stops it.
func (p *Pipeline) Start() {
	p.wg.Add(1)
	go p.commitLoop()
}

// Stop commits what is pending and stops the committer. Callers must stop
// publishing (stop the broker) first. If ctx ends before the last commit
// finishes (a store that stays down), the commit is abandoned and its
// waiters get an error: their messages were never acknowledged.
func (p *Pipeline) Stop(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	close(p.kick)
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		p.cancel()
		return nil
	case <-ctx.Done():
		p.cancel()
		<-done
		return fmt.Errorf("stop ingest: %w", ctx.Err())
	}
}

// Ingest handles one telemetry message of device. It returns nil when the
// readings are stored (QoS 1) or queued (QoS 0); an error wrapping
// ErrRejected (a *Rejection) when the message was invalid and kept as a dead
// letter; any other error when nothing was stored, in which case the
// message must not be acknowledged.
func (p *Pipeline) Ingest(ctx context.Context, device string, payload []byte, qos byte, received time.Time) error {
	p.metrics.messages.Inc()
	now := received.UnixMilli()
	readings, rej := p.check(ctx, device, payload, now)
	if rej != nil {
		return p.reject(ctx, device, payload, received, qos, rej)
	}

	m := &msg{device: device, payload: payload, received: received}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errors.New("ingest is stopping")
	}
	b := p.cur
	m.start = len(b.samples)
	nEvents := len(b.events)
	b.samples, b.events = telemetry.ToSamples(device, readings, b.samples, b.events)
	m.end = len(b.samples)
	if qos == 0 {
		if p.qos0Count+(m.end-m.start) > p.opts.QoS0Queue {
			b.samples, b.events = b.samples[:m.start], b.events[:nEvents]
			p.mu.Unlock()
			p.metrics.dropped.WithLabelValues("qos0_queue_full").Inc()
			return nil // QoS 0 is best effort: dropped and counted
		}
		p.qos0Count += m.end - m.start
	}
	b.msgs = append(b.msgs, m)
	p.mu.Unlock()
	p.metrics.readings.Add(float64(len(readings)))
	p.signal()

	if qos == 0 {
		return nil
	}
	select {
	case <-b.done:
	case <-ctx.Done():
		return fmt.Errorf("ingest: %w", ctx.Err())
	}
	if b.err != nil {
		return fmt.Errorf("ingest: commit: %w", b.err)
	}
	if m.rejected != nil {
		p.report(device, m.rejected.(*Rejection), received)
		return m.rejected
	}
	return nil
}

// check decodes and validates a payload.
func (p *Pipeline) check(ctx context.Context, device string, payload []byte, now int64) ([]telemetry.Reading, *Rejection) {
	readings, err := telemetry.Decode(payload, now)
	if err != nil {
		return nil, &Rejection{Reason: "bad_payload", Detail: err.Error()}
	}
	dt := p.types.get(ctx, device)
	minTS := int64(math.MinInt64)
	if p.opts.MinValidTime != nil {
		minTS = p.opts.MinValidTime()
	}
	if p.opts.MaxAge > 0 {
		minTS = max(minTS, now-p.opts.MaxAge.Milliseconds())
	}
	maxTS := now + p.opts.MaxFuture.Milliseconds()
	for i := range readings {
		r := &readings[i]
		if err := dt.Validate(r); err != nil {
			var ve *telemetry.ValidationError
			if errors.As(err, &ve) {
				return nil, &Rejection{Reason: ve.Code, Detail: err.Error()}
			}
			return nil, &Rejection{Reason: "invalid", Detail: err.Error()}
		}
		if r.TS < minTS {
			return nil, &Rejection{Reason: "too_old", Detail: fmt.Sprintf("ts %s is older than the store accepts (%s)", fmtMS(r.TS), fmtMS(minTS))}
		}
		if p.opts.MaxFuture > 0 && r.TS > maxTS {
			return nil, &Rejection{Reason: "too_new", Detail: fmt.Sprintf("ts %s is more than %s ahead of the hub's clock", fmtMS(r.TS), p.opts.MaxFuture)}
		}
	}
	return readings, nil
}

func fmtMS(ms int64) string { return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano) }

// reject keeps the message as a dead letter and, for QoS 1, waits until the
// dead letter is committed.
func (p *Pipeline) reject(ctx context.Context, device string, payload []byte, received time.Time, qos byte, rej *Rejection) error {
	p.metrics.rejected.WithLabelValues(device, rej.Reason).Inc()
	dl := registry.DeadLetter{
		Device: device, Topic: telemetry.TelemetryTopic(device), Payload: payload,
		Reason: rej.Reason, Detail: rej.Detail, ReceivedAt: received,
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errors.New("ingest is stopping")
	}
	b := p.cur
	b.dead = append(b.dead, dl)
	p.mu.Unlock()
	p.signal()
	if qos > 0 {
		select {
		case <-b.done:
		case <-ctx.Done():
			return fmt.Errorf("ingest: %w", ctx.Err())
		}
		if b.err != nil {
			return fmt.Errorf("ingest: commit dead letter: %w", b.err)
		}
	}
	p.report(device, rej, received)
	return rej
}

// report tells the device why its message was rejected, on devices/{id}/errors.
func (p *Pipeline) report(device string, rej *Rejection, received time.Time) {
	if p.opts.Publish == nil {
		return
	}
	b, _ := json.Marshal(struct {
		Reason     string    `json:"reason"`
		Error      string    `json:"error"`
		Topic      string    `json:"topic"`
		ReceivedAt time.Time `json:"received_at"`
	}{rej.Reason, rej.Detail, telemetry.TelemetryTopic(device), received.UTC()})
	if err := p.opts.Publish(telemetry.ErrorsTopic(device), b); err != nil {
		p.metrics.dropped.WithLabelValues("error_report").Inc()
	}
}

func (p *Pipeline) signal() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// commitLoop commits whatever is pending as soon as the previous commit is
// done. Closing kick (Stop) makes it commit the rest and return.
func (p *Pipeline) commitLoop() {
	defer p.wg.Done()
	for range p.kick {
		p.commitPending()
	}
	p.commitPending()
}

func (p *Pipeline) commitPending() {
	p.mu.Lock()
	b := p.cur
	if b.empty() {
		p.mu.Unlock()
		return
	}
	p.cur = newBatch()
	p.qos0Count = 0
	p.mu.Unlock()

	start := time.Now()
	b.err = p.commit(b)
	p.metrics.commitSeconds.Observe(time.Since(start).Seconds())
	p.metrics.batchSamples.Observe(float64(len(b.samples)))
	if b.err != nil {
		p.metrics.commitFailures.Inc()
		p.log.Error("ingest commit failed", "samples", len(b.samples), "err", b.err)
	} else {
		p.metrics.samples.Add(float64(len(b.samples)))
		if p.opts.OnCommit != nil && len(b.samples) > 0 {
			p.opts.OnCommit(b.samples)
		}
		if p.opts.OnReject != nil {
			for _, dl := range b.dead {
				p.opts.OnReject(dl)
			}
		}
	}
	close(b.done)
}

// commit writes a batch: samples to the store, string events and dead
// letters to the registry. Samples the store refuses as too old turn their
// whole message into a dead letter.
func (p *Pipeline) commit(b *batch) error {
	ctx := p.ctx
	if len(b.samples) > 0 {
		err := p.opts.Store.Append(ctx, b.samples)
		// A store may refuse some samples for good (several kinds at once,
		// joined): their messages become dead letters, the rest is stored.
		var tooOld *store.TooOldError
		var tooNew *store.TooNewError
		var refused *store.RejectedError
		handled := false
		if errors.As(err, &tooOld) {
			p.rejectRefused(b, tooOld.Index, &Rejection{Reason: "too_old", Detail: fmt.Sprintf("older than the store accepts (%s)", fmtMS(tooOld.MinTS))})
			handled = true
		}
		if errors.As(err, &tooNew) {
			p.rejectRefused(b, tooNew.Index, &Rejection{Reason: "too_new", Detail: fmt.Sprintf("further ahead than the store accepts (%s)", fmtMS(tooNew.MaxTS))})
			handled = true
		}
		if errors.As(err, &refused) {
			p.rejectRefused(b, refused.Index, &Rejection{Reason: "store_refused", Detail: refused.Reason})
			handled = true
		}
		if err != nil && !handled {
			return fmt.Errorf("append %d samples: %w", len(b.samples), err)
		}
	}
	if len(b.events) > 0 {
		if err := p.opts.Registry.AddEvents(ctx, b.events); err != nil {
			return fmt.Errorf("add %d events: %w", len(b.events), err)
		}
	}
	if len(b.dead) > 0 {
		if err := p.opts.Registry.AddDeadLetters(ctx, b.dead); err != nil {
			return fmt.Errorf("add %d dead letters: %w", len(b.dead), err)
		}
	}
	return nil
}

// rejectRefused turns each message with a sample the store refused for
// good into a dead letter; its other samples may be stored, which a replay
// repeats harmlessly.
func (p *Pipeline) rejectRefused(b *batch, index []int, rej *Rejection) {
	// msgs are in sample order: walk both lists once.
	j := 0
	for _, idx := range index {
		for j < len(b.msgs) && b.msgs[j].end <= idx {
			j++
		}
		if j == len(b.msgs) {
			break
		}
		m := b.msgs[j]
		if idx < m.start || m.rejected != nil {
			continue
		}
		m.rejected = rej
		p.metrics.rejected.WithLabelValues(m.device, rej.Reason).Inc()
		b.dead = append(b.dead, registry.DeadLetter{
			Device: m.device, Topic: telemetry.TelemetryTopic(m.device), Payload: m.payload,
			Reason: rej.Reason, Detail: rej.Detail, ReceivedAt: m.received,
		})
	}
}

// Replay re-ingests a dead letter with today's schema: when it passes now,
// its readings are stored and it is marked replayed; otherwise it stays a
// dead letter and the new reason is returned (wrapping ErrRejected).
func (p *Pipeline) Replay(ctx context.Context, id int64) error {
	dl, err := p.opts.Registry.DeadLetter(ctx, id)
	if err != nil {
		return fmt.Errorf("replay dead letter %d: %w", id, err)
	}
	readings, rej := p.check(ctx, dl.Device, dl.Payload, dl.ReceivedAt.UnixMilli())
	if rej != nil {
		if err := p.opts.Registry.MarkReplayed(ctx, id, time.Time{}, rej.Error()); err != nil {
			return fmt.Errorf("replay dead letter %d: %w", id, err)
		}
		return fmt.Errorf("replay dead letter %d: %w", id, rej)
	}
	samples, events := telemetry.ToSamples(dl.Device, readings, nil, nil)
	if len(samples) > 0 {
		if err := p.opts.Store.Append(ctx, samples); err != nil {
			return fmt.Errorf("replay dead letter %d: %w", id, err)
		}
	}
	if len(events) > 0 {
		if err := p.opts.Registry.AddEvents(ctx, events); err != nil {
			return fmt.Errorf("replay dead letter %d: %w", id, err)
		}
	}
	if err := p.opts.Registry.MarkReplayed(ctx, id, p.opts.Now(), ""); err != nil {
		return fmt.Errorf("replay dead letter %d: %w", id, err)
	}
	p.metrics.replayed.Inc()
	return nil
}
