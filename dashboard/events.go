package dashboard

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fieldhub/fieldhub/registry"
	"github.com/fieldhub/fieldhub/telemetry"
)

// Event types of the live stream.
const (
	EventReading   = "reading"
	EventPresence  = "presence"
	EventCommand   = "command"
	EventRejection = "rejection"
)

// eventTypes lists the types in the order of their filter bits.
var eventTypes = [...]string{EventReading, EventPresence, EventCommand, EventRejection}

// typeMask is a set of event types, one bit per entry of eventTypes.
type typeMask uint8

const allTypes typeMask = 1<<len(eventTypes) - 1

func maskOf(typ string) typeMask {
	for i, t := range eventTypes {
		if t == typ {
			return 1 << i
		}
	}
	return 0
}

// parseTypes reads a comma-separated list of event types ("" = all).
func parseTypes(s string) (typeMask, error) {
	if s == "" {
		return allTypes, nil
	}
	var m typeMask
	for t := range strings.SplitSeq(s, ",") {
		b := maskOf(strings.TrimSpace(t))
		if b == 0 {
			return 0, fmt.Errorf("unknown event type %q (want %s)", t, strings.Join(eventTypes[:], ", "))
		}
		m |= b
	}
	return m, nil
}

// Event is one item of the live stream (/api/v1/events).
type Event struct {
	// ID is set by Publish: it increases by one per published event, so
	// the stream's order is the publish order.
	ID     uint64 `json:"id"`
	Type   string `json:"type"` // reading, presence, command, rejection
	Device string `json:"device"`
	TS     int64  `json:"ts"` // unix ms
	Data   any    `json:"data"`
}

// ReadingData is the Data of a reading event: what one commit stored for
// one device. Batching per commit and device keeps the stream's cost per
// commit, not per sample.
type ReadingData struct {
	Samples []LatestSample `json:"samples"`
}

// EventFilter selects events for a subscriber.
type EventFilter struct {
	Device string   // "" = every device
	Types  []string // empty = every type
}

// Events fans live events out to subscribers and keeps the fleet's
// per-second reading and rejection counts (the summary's rates). Publish
// never blocks: a subscriber whose buffer is full is dropped (its channel
// closed), so a slow browser cannot slow ingest. Safe for concurrent use.
type Events struct {
	buffer int
	now    func() time.Time
	start  time.Time

	// wantReadings is true while any subscriber takes reading events, so
	// the committer skips building them otherwise (one atomic load).
	wantReadings atomic.Bool
	active       atomic.Int32

	mu          sync.Mutex
	seq         uint64
	closed      bool
	subs        map[*Subscription]struct{}
	allReadings int            // subscribers of every device's readings
	devReadings map[string]int // subscribers of one device's readings

	published atomic.Uint64
	dropped   atomic.Uint64

	readings   rateRing
	rejections rateRing

	recentMu sync.Mutex
	recent   [recentRejections]Event // ring
	recentN  int                     // rejections ever recorded
}

// recentRejections is how many rejection events the summary keeps.
const recentRejections = 20

// NewEvents makes a fan-out whose subscribers buffer up to buffer events.
func NewEvents(buffer int) *Events {
	if buffer < 1 {
		buffer = 256
	}
	return &Events{buffer: buffer, now: time.Now, start: time.Now(), subs: map[*Subscription]struct{}{}, devReadings: map[string]int{}}
}

// Subscription is one subscriber's stream.
type Subscription struct {
	// C delivers the events in publish order. It is closed by Close, by
	// Events.Close, or when the subscriber fell behind (see Dropped).
	C <-chan Event

	e       *Events
	ch      chan Event
	device  string
	types   typeMask
	dropped bool // guarded by e.mu
	gone    bool // guarded by e.mu: removed from e.subs
}

// Active reports whether anyone listens, so producers can skip building
// events nobody reads.
func (e *Events) Active() bool { return e.active.Load() > 0 }

// Subscribe starts a subscription; Close it when done. An unknown type in
// f is an error.
func (e *Events) Subscribe(f EventFilter) (*Subscription, error) {
	m, err := parseTypes(strings.Join(f.Types, ","))
	if err != nil {
		return nil, err
	}
	ch := make(chan Event, e.buffer)
	s := &Subscription{C: ch, e: e, ch: ch, device: f.Device, types: m}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		close(ch)
		s.gone = true
		return s, nil
	}
	e.subs[s] = struct{}{}
	e.active.Add(1)
	if m&maskOf(EventReading) != 0 {
		if s.device == "" {
			e.allReadings++
		} else {
			e.devReadings[s.device]++
		}
		e.wantReadings.Store(true)
	}
	return s, nil
}

// Close ends the subscription (idempotent).
func (s *Subscription) Close() {
	s.e.mu.Lock()
	s.e.removeLocked(s)
	s.e.mu.Unlock()
}

// Dropped reports whether the subscription ended because the subscriber
// fell behind (rather than being closed).
func (s *Subscription) Dropped() bool {
	s.e.mu.Lock()
	defer s.e.mu.Unlock()
	return s.dropped
}

func (e *Events) removeLocked(s *Subscription) {
	if s.gone {
		return
	}
	s.gone = true
	delete(e.subs, s)
	close(s.ch)
	e.active.Add(-1)
	if s.types&maskOf(EventReading) != 0 {
		if s.device == "" {
			e.allReadings--
		} else if e.devReadings[s.device]--; e.devReadings[s.device] <= 0 {
			delete(e.devReadings, s.device)
		}
		e.wantReadings.Store(e.allReadings > 0 || len(e.devReadings) > 0)
	}
}

// Close ends every subscription and refuses new ones (their channel is
// closed at once); Publish becomes a no-op. The hub calls it when it stops
// so that open event streams end and HTTP shutdown need not wait for them.
func (e *Events) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	for s := range e.subs {
		e.removeLocked(s)
	}
}

// Publish sends ev to every subscriber interested in its device and type,
// after numbering it (ev.ID is overwritten).
func (e *Events) Publish(ev Event) {
	if ev.Type == EventRejection {
		e.rejections.add(1, e.now())
	}
	if !e.Active() {
		return
	}
	e.mu.Lock()
	e.publishLocked(ev)
	e.mu.Unlock()
}

func (e *Events) publishLocked(ev Event) {
	if e.closed {
		return
	}
	e.seq++
	ev.ID = e.seq
	e.published.Add(1)
	m := maskOf(ev.Type)
	for s := range e.subs {
		if s.types&m == 0 || (s.device != "" && s.device != ev.Device) {
			continue
		}
		select {
		case s.ch <- ev:
		default:
			s.dropped = true
			e.dropped.Add(1)
			e.removeLocked(s)
		}
	}
}

// PublishSamples counts a committed batch for the reading rate and, while
// anyone watches readings, publishes one reading event per device run of
// the batch. It runs on ingest's committer, so it is cheap: an atomic add
// and load when nobody watches readings, one map lookup per device run
// otherwise. It does not keep samples.
func (e *Events) PublishSamples(samples []telemetry.Sample) {
	if len(samples) == 0 {
		return
	}
	e.readings.add(len(samples), e.now())
	if !e.wantReadings.Load() {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := 0; i < len(samples); {
		dev := samples[i].Device
		j := i + 1
		for j < len(samples) && samples[j].Device == dev {
			j++
		}
		if e.allReadings > 0 || e.devReadings[dev] > 0 {
			out := make([]LatestSample, j-i)
			last := samples[i].TS
			for k, sm := range samples[i:j] {
				out[k] = LatestSample{Metric: sm.Metric, TS: sm.TS, Value: sm.Value}
				last = max(last, sm.TS)
			}
			e.publishLocked(Event{Type: EventReading, Device: dev, TS: last, Data: ReadingData{Samples: out}})
		}
		i = j
	}
}

// PublishRejection publishes a dead letter as a rejection event (and
// counts it for the rejection rate).
func (e *Events) PublishRejection(dl registry.DeadLetter) {
	ev := Event{Type: EventRejection, Device: dl.Device, TS: dl.ReceivedAt.UnixMilli(),
		Data: map[string]any{"id": dl.ID, "reason": dl.Reason, "detail": dl.Detail}}
	e.recentMu.Lock()
	e.recent[e.recentN%recentRejections] = ev
	e.recentN++
	e.recentMu.Unlock()
	e.Publish(ev)
}

// RecentRejections returns the last rejection events (up to 20) since the
// hub started, oldest first, for the overview's list before any live
// event arrives.
func (e *Events) RecentRejections() []Event {
	e.recentMu.Lock()
	defer e.recentMu.Unlock()
	n := min(e.recentN, recentRejections)
	out := make([]Event, 0, n)
	for i := e.recentN - n; i < e.recentN; i++ {
		out = append(out, e.recent[i%recentRejections])
	}
	return out
}

// Rates are the fleet's recent per-second counts.
type Rates struct {
	// ReadingsPerSec and RejectionsPerSec average the last Window whole
	// seconds (fewer right after the hub started).
	ReadingsPerSec   float64 `json:"readings_per_sec"`
	RejectionsPerSec float64 `json:"rejections_per_sec"`
	Window           int     `json:"window_sec"`
	// Readings and Rejections are the counts of each of those seconds,
	// oldest first (for sparklines).
	Readings   []uint64 `json:"readings"`
	Rejections []uint64 `json:"rejections"`
}

// rateWindow is how many whole seconds the summary's rates average.
const rateWindow = 60

// Rates returns the reading and rejection rates over the last minute.
func (e *Events) Rates() Rates {
	now := e.now()
	r := Rates{Window: rateWindow, Readings: e.readings.last(now, rateWindow), Rejections: e.rejections.last(now, rateWindow)}
	// Right after start, average over the seconds that have passed only.
	if up := int(now.Unix() - e.start.Unix()); up < rateWindow {
		r.Window = max(up, 1)
	}
	r.ReadingsPerSec = average(r.Readings[rateWindow-r.Window:])
	r.RejectionsPerSec = average(r.Rejections[rateWindow-r.Window:])
	return r
}

func average(counts []uint64) float64 {
	var sum uint64
	for _, c := range counts {
		sum += c
	}
	return float64(sum) / float64(len(counts))
}

// EventStats are the fan-out's counters.
type EventStats struct {
	Subscribers int
	Published   uint64
	Dropped     uint64
}

// Stats reports the fan-out's counters.
func (e *Events) Stats() EventStats {
	return EventStats{Subscribers: int(e.active.Load()), Published: e.published.Load(), Dropped: e.dropped.Load()}
}

// ringSize must exceed rateWindow by at least the current second.
const ringSize = 64

// rateRing counts events per wall-clock second over the last ringSize
// seconds. A mutex is cheap here: it is taken once per commit, not per
// sample.
type rateRing struct {
	mu     sync.Mutex
	secs   [ringSize]int64
	counts [ringSize]uint64
}

func (r *rateRing) add(n int, now time.Time) {
	sec := now.Unix()
	i := sec % ringSize
	r.mu.Lock()
	if r.secs[i] != sec {
		r.secs[i], r.counts[i] = sec, 0
	}
	r.counts[i] += uint64(n)
	r.mu.Unlock()
}

// last returns the counts of the n whole seconds before now's second,
// oldest first; seconds without events count 0.
func (r *rateRing) last(now time.Time, n int) []uint64 {
	out := make([]uint64, n)
	cur := now.Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range n {
		sec := cur - int64(n-k)
		if i := sec % ringSize; r.secs[i] == sec {
			out[k] = r.counts[i]
		}
	}
	return out
}
